//! The pool: a scheduler with priorities, delays, retries, cancel, results
//! and events over a [`Store`], running tasks on an [`Executor`].
//!
//! # How it works
//!
//! The store holds the truth about every task; the pool keeps an index of
//! the tasks waiting to run (a priority heap of ready tasks, a time heap of
//! delayed ones and one of expiries) behind one short lock that is never
//! held while a task runs. Each transition writes the store while holding
//! that lock, so the index and the store agree. Workers (async tasks on the
//! executor's threads) take the next ready task as soon as they are free; a
//! timer task sleeps until the next delayed task or expiry is due, or until
//! an earlier one is submitted.

pub(crate) mod events;
mod sched;
pub(crate) mod task;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore, broadcast, oneshot};

use self::events::{Event, EventKind, Events};
use self::sched::{Pending, RunningTask, Sched};
use self::task::{
    Attempt, ModuleRef, TaskId, TaskRecord, TaskResult, TaskSpec, TaskState, now_millis,
    resolve_time,
};
use crate::store::{Inserted, MemoryStore, StateCounts, Store, StoredModule, TaskFilter};
use crate::{
    CancellationToken, CompiledModule, EngineConfig, Error, Executor, ModuleHash, Outcome, Result,
};

/// How a [`Pool`] is set up.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    pub(crate) engine: EngineConfig,
    pub(crate) max_queued: usize,
    pub(crate) retention: Duration,
    pub(crate) max_results: Option<u64>,
    pub(crate) stop_grace: Duration,
    pub(crate) gc_modules: bool,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            engine: EngineConfig::default(),
            max_queued: 1_000_000,
            retention: Duration::from_secs(7 * 24 * 3600),
            max_results: None,
            stop_grace: Duration::from_secs(30),
            gc_modules: false,
        }
    }
}

impl PoolConfig {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// The engine and worker settings (workers, memory, fuel, default
    /// limits). Default: [`EngineConfig::default`].
    pub fn engine(&mut self, engine: EngineConfig) -> &mut Self {
        self.engine = engine;
        self
    }

    /// Mutable access to the engine settings.
    pub fn engine_mut(&mut self) -> &mut EngineConfig {
        &mut self.engine
    }

    /// Shorthand for the engine's worker count. Default: one per core.
    pub fn workers(&mut self, workers: usize) -> &mut Self {
        self.engine.workers(workers);
        self
    }

    /// The most tasks waiting (queued or scheduled) at once. Past it
    /// [`Pool::submit`] waits for room and [`Pool::try_submit`] fails with
    /// [`Error::QueueFull`]. Default: 1,000,000.
    pub fn max_queued(&mut self, max: usize) -> &mut Self {
        self.max_queued = max;
        self
    }

    /// How long finished tasks and their results are kept. Default: 7 days.
    pub fn retention(&mut self, retention: Duration) -> &mut Self {
        self.retention = retention;
        self
    }

    /// The most finished tasks kept; the oldest go first. Default: no limit
    /// (only [`PoolConfig::retention`] applies).
    pub fn max_results(&mut self, max: u64) -> &mut Self {
        self.max_results = Some(max);
        self
    }

    /// Whether retention also removes stored modules that no task
    /// references any more, so that the data directory does not grow with
    /// modules nobody uses. A module collected this way must be registered
    /// again before tasks name it by hash (submitting its bytes always
    /// works). Default: off.
    pub fn gc_modules(&mut self, on: bool) -> &mut Self {
        self.gc_modules = on;
        self
    }

    /// How long [`Pool::stop`] lets running tasks finish before killing
    /// them (they are queued again). Default: 30 s.
    pub fn stop_grace(&mut self, grace: Duration) -> &mut Self {
        self.stop_grace = grace;
        self
    }
}

/// What [`Pool::cancel`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelResult {
    /// The task was waiting and will never run.
    Cancelled,
    /// The task was running and is being killed; its result will say
    /// `cancelled`.
    Killed,
    /// The task had already finished, in this state; nothing changed.
    AlreadyFinished(TaskState),
}

/// A snapshot of the pool.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Stats {
    /// Tasks in each state; they add up to `total`.
    pub counts: StateCounts,
    /// All tasks in the store.
    pub total: u64,
    /// Workers allowed to take tasks.
    pub workers: usize,
    /// Workers running a task now.
    pub busy: usize,
    /// Workers free now.
    pub idle: usize,
    /// Tasks finished (any final state) since the pool started.
    pub finished: u64,
    /// Tasks finished per second over the last 10 seconds.
    pub finished_per_sec: f64,
    /// How long the pool has run, in seconds.
    pub uptime_secs: f64,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
#[repr(u8)]
enum Phase {
    Open = 0,
    Closing = 1,
    Stopping = 2,
    Stopped = 3,
}

pub(crate) struct Inner {
    executor: Executor,
    store: Arc<dyn Store>,
    config: PoolConfig,
    sched: Mutex<Sched>,
    /// Workers wait here for work.
    work: Notify,
    /// The timer waits here for an earlier deadline.
    timer: Notify,
    /// `close`/`stop` wait here for tasks to end.
    quiet: Notify,
    events: broadcast::Sender<Event>,
    waiters: Mutex<HashMap<TaskId, Vec<oneshot::Sender<TaskResult>>>>,
    phase: AtomicU8,
    queue_room: Semaphore,
    active_workers: AtomicUsize,
    finished: AtomicU64,
    recent: Mutex<sched::RateWindow>,
    started: Instant,
    background: Arc<Background>,
}

/// A pool of WASM workers with a durable (or in-memory) queue.
///
/// Cloning is cheap and shares the pool. When the last clone (and the last
/// [`TaskHandle`]) is dropped without [`Pool::close`] or [`Pool::stop`],
/// running tasks are killed and queued again in the store.
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    inner: Arc<Inner>,
}

impl Drop for Shared {
    /// Stops at once (running tasks are killed and queued again) and waits
    /// for the workers to let go of the store, so that the data directory
    /// can be opened again as soon as this returns.
    fn drop(&mut self) {
        self.inner.halt();
        self.inner.background.wait_for_none(Duration::from_secs(30));
    }
}

/// Counts the pool's background tasks (workers, timer) still alive.
#[derive(Default)]
struct Background {
    live: Mutex<usize>,
    gone: std::sync::Condvar,
}

impl Background {
    fn started(&self) {
        *self.live.lock().unwrap_or_else(PoisonError::into_inner) += 1;
    }

    fn ended(&self) {
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        *live -= 1;
        if *live == 0 {
            self.gone.notify_all();
        }
    }

    fn wait_for_none(&self, at_most: Duration) {
        let live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        let (live, timeout) = self
            .gone
            .wait_timeout_while(live, at_most, |live| *live > 0)
            .unwrap_or_else(PoisonError::into_inner);
        if timeout.timed_out() {
            tracing::warn!(
                tasks = *live,
                "pool tasks still running after the pool was dropped"
            );
        }
    }
}

/// A background task's hold on the pool; marks the task's end, however it
/// ends, after letting go of the pool.
struct BackgroundGuard {
    inner: Option<Arc<Inner>>,
    background: Arc<Background>,
}

impl BackgroundGuard {
    fn new(inner: &Arc<Inner>) -> Self {
        inner.background.started();
        Self {
            inner: Some(inner.clone()),
            background: inner.background.clone(),
        }
    }

    fn inner(&self) -> &Arc<Inner> {
        self.inner.as_ref().expect("held until drop")
    }
}

impl Drop for BackgroundGuard {
    fn drop(&mut self) {
        drop(self.inner.take());
        self.background.ended();
    }
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("store", &self.shared.inner.store)
            .field("config", &self.shared.inner.config)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// A pool over an in-memory store.
    pub fn new(config: PoolConfig) -> Result<Self> {
        Self::with_store(config, Arc::new(MemoryStore::new()))
    }

    /// A pool over `store`. Tasks the store holds unfinished are resumed:
    /// queued and scheduled ones keep their order and times; ones that were
    /// running (the process died) run again, the interrupted run counted as
    /// an attempt.
    pub fn with_store(config: PoolConfig, store: Arc<dyn Store>) -> Result<Self> {
        if config.max_queued == 0 {
            return Err(Error::Config("`max_queued` must be at least 1".into()));
        }
        let executor = Executor::new(&config.engine)?;
        let slots = config.engine.slots();
        let workers = config.engine.workers;
        let inner = Arc::new(Inner {
            executor,
            store,
            sched: Mutex::new(Sched::default()),
            work: Notify::new(),
            timer: Notify::new(),
            quiet: Notify::new(),
            events: broadcast::channel(16_384).0,
            waiters: Mutex::new(HashMap::new()),
            phase: AtomicU8::new(Phase::Open as u8),
            queue_room: Semaphore::new(config.max_queued.min(Semaphore::MAX_PERMITS)),
            active_workers: AtomicUsize::new(workers),
            finished: AtomicU64::new(0),
            recent: Mutex::new(sched::RateWindow::default()),
            started: Instant::now(),
            background: Arc::default(),
            config,
        });
        inner.recover()?;
        let handle = inner.executor.handle().clone();
        for index in 0..slots {
            handle.spawn(worker(BackgroundGuard::new(&inner), index));
        }
        handle.spawn(timer(BackgroundGuard::new(&inner)));
        handle.spawn(sweeper(Arc::downgrade(&inner)));
        Ok(Pool {
            shared: Arc::new(Shared { inner }),
        })
    }

    /// A pool over the data directory `dir`: the sled store in it (created
    /// if missing) and its compiled-artifact cache (`dir/artifacts`, unless
    /// the configuration names another). Reopening the same directory is
    /// all a restart needs: unfinished tasks resume.
    pub fn open(mut config: PoolConfig, dir: impl AsRef<std::path::Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let store = crate::store::SledStore::open(dir, &crate::store::SledOptions::default())?;
        if config.engine.artifact_dir.is_none() {
            config.engine.artifact_dir(dir.join(crate::ARTIFACTS_DIR));
        }
        Self::with_store(config, Arc::new(store))
    }

    fn inner(&self) -> &Arc<Inner> {
        &self.shared.inner
    }

    /// The executor the pool runs tasks on.
    pub fn executor(&self) -> &Executor {
        &self.inner().executor
    }

    /// The store the pool keeps tasks in.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner().store
    }

    /// Validates, compiles and stores a module; returns its hash, by which
    /// tasks can name it.
    pub fn register(&self, bytes: &[u8]) -> Result<ModuleHash> {
        let module = self.inner().register_stored(bytes)?;
        self.inner().store.put_module(&module.hash(), bytes)?;
        Ok(module.hash())
    }

    // --- module run settings (issue 12) -----------------------------------
    /// Like [`Pool::register`], and sets the module's run settings
    /// (arguments, environment, success codes, scratch directory; see
    /// [`ModuleSettings`](crate::ModuleSettings)), stored with it. Every
    /// task of the module that starts afterwards runs with them, including
    /// tasks already queued. Registering again with other settings replaces
    /// them; [`Pool::register`] leaves them as they are.
    pub fn register_with(
        &self,
        bytes: &[u8],
        settings: crate::ModuleSettings,
    ) -> Result<ModuleHash> {
        let module = self.inner().executor.register(bytes)?;
        self.inner()
            .executor
            .set_module_settings(&module, settings.clone())?;
        self.inner().store.put_module(&module.hash(), bytes)?;
        self.inner()
            .store
            .put_module_settings(&module.hash(), &settings)?;
        Ok(module.hash())
    }

    /// A module's run settings (the default if it has none).
    pub fn module_settings(&self, hash: &ModuleHash) -> Result<crate::ModuleSettings> {
        Ok(self
            .inner()
            .store
            .module_settings(hash)?
            .unwrap_or_default())
    }
    // --- end of module run settings ---------------------------------------

    /// Deletes a module from the store and the compiled cache, unless an
    /// unfinished task uses it ([`Error::ModuleInUse`]); `false` if there
    /// was no such module.
    pub fn delete_module(&self, hash: &ModuleHash) -> Result<bool> {
        let deleted = self.inner().store.delete_module(hash)?;
        if deleted {
            // Module run settings (issue 12) go with the module.
            self.inner()
                .store
                .put_module_settings(hash, &crate::ModuleSettings::default())?;
        }
        self.inner().executor.forget_module(hash);
        Ok(deleted)
    }

    /// The modules in the store.
    pub fn modules(&self) -> Result<Vec<StoredModule>> {
        self.inner().store.modules()
    }

    /// Submits a task; waits for room if the queue is full. Returns once
    /// the task is stored (and flushed, with a durable store).
    pub async fn submit(&self, spec: TaskSpec) -> Result<TaskHandle> {
        self.inner().check_open()?;
        let permit = self
            .inner()
            .queue_room
            .acquire()
            .await
            .map_err(|_| Error::ShutDown)?;
        permit.forget();
        self.submit_with_room(spec).await
    }

    /// Submits a task, or fails at once with [`Error::QueueFull`] if the
    /// queue is full.
    pub async fn try_submit(&self, spec: TaskSpec) -> Result<TaskHandle> {
        self.inner().check_open()?;
        match self.inner().queue_room.try_acquire() {
            Ok(permit) => permit.forget(),
            Err(_) => return Err(Error::QueueFull(self.inner().config.max_queued)),
        }
        self.submit_with_room(spec).await
    }

    async fn submit_with_room(&self, spec: TaskSpec) -> Result<TaskHandle> {
        let inner = self.inner();
        let stored = match inner.store_new_task(spec) {
            Ok(stored) => stored,
            Err(e) => {
                inner.queue_room.add_permits(1);
                return Err(e);
            }
        };
        let record = match stored {
            Stored::Existing(id) => {
                inner.queue_room.add_permits(1);
                return Ok(TaskHandle {
                    id,
                    pool: self.clone(),
                });
            }
            Stored::New(record) => *record,
        };
        if inner.store.is_durable() {
            let store = inner.store.clone();
            inner
                .executor
                .handle()
                .spawn_blocking(move || store.flush())
                .await
                .map_err(|e| Error::Host(format!("flush task panicked: {e}")))??;
        }
        let id = record.id;
        inner.emit(id, EventKind::Submitted);
        inner.enqueue(record, true);
        Ok(TaskHandle {
            id,
            pool: self.clone(),
        })
    }

    /// A handle to an existing task (to wait for it).
    pub fn handle(&self, id: TaskId) -> TaskHandle {
        TaskHandle {
            id,
            pool: self.clone(),
        }
    }

    /// Cancels a task: a waiting one never runs; a running one is killed.
    pub fn cancel(&self, id: TaskId) -> Result<CancelResult> {
        self.inner().cancel(id)
    }

    /// A task's record (state, spec, attempts; the result once final).
    pub fn status(&self, id: TaskId) -> Result<TaskRecord> {
        self.inner().store.get(&id)?.ok_or(Error::NotFound(id))
    }

    /// A task's result, or `None` while it has not finished.
    pub fn result(&self, id: TaskId) -> Result<Option<TaskResult>> {
        Ok(self.status(id)?.result())
    }

    /// Waits for a task's result.
    pub async fn wait(&self, id: TaskId) -> Result<TaskResult> {
        self.inner().wait(id).await
    }

    /// Waits at most `timeout` for a task's result; `None` if it has not
    /// finished by then.
    pub async fn wait_timeout(&self, id: TaskId, timeout: Duration) -> Result<Option<TaskResult>> {
        match tokio::time::timeout(timeout, self.inner().wait(id)).await {
            Ok(result) => result.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Tasks matching `filter`, newest first. For the next page, pass the
    /// last id of this one as `filter.before`.
    pub fn list(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>> {
        self.inner().store.list(filter)
    }

    /// The events of every task from now on.
    pub fn subscribe(&self) -> Events {
        Events(self.inner().events.subscribe())
    }

    /// A snapshot of counts, workers and throughput.
    pub fn stats(&self) -> Result<Stats> {
        let inner = self.inner();
        let counts = inner.store.counts()?;
        let busy = inner.lock().running.len();
        let workers = inner.active_workers.load(Ordering::Relaxed);
        Ok(Stats {
            total: counts.total(),
            counts,
            workers,
            busy,
            idle: workers.saturating_sub(busy),
            finished: inner.finished.load(Ordering::Relaxed),
            finished_per_sec: inner
                .recent
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .rate(),
            uptime_secs: inner.started.elapsed().as_secs_f64(),
        })
    }

    /// Changes how many workers take tasks, while the pool runs, up to the
    /// slots the engine was built for ([`EngineConfig::max_workers`]). A
    /// worker above the new count finishes its task, then waits.
    pub fn set_workers(&self, workers: usize) -> Result<()> {
        let slots = self.inner().config.engine.slots();
        if workers == 0 || workers > slots {
            return Err(Error::Config(format!(
                "workers must be between 1 and {slots} (the pool's `max_workers`)"
            )));
        }
        self.inner()
            .active_workers
            .store(workers, Ordering::Relaxed);
        self.inner().work.notify_waiters();
        Ok(())
    }

    /// Accepts nothing new, runs everything waiting (delayed tasks at their
    /// time), then returns. Idempotent.
    pub async fn close(&self) -> Result<()> {
        let inner = self.inner();
        let _ = inner.phase.compare_exchange(
            Phase::Open as u8,
            Phase::Closing as u8,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        inner.work.notify_waiters();
        inner.timer.notify_one();
        if inner.phase() == Phase::Closing {
            inner
                .until(|s| s.pending.is_empty() && s.running.is_empty())
                .await;
            let _ = inner.phase.compare_exchange(
                Phase::Closing as u8,
                Phase::Stopped as u8,
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
        } else {
            inner.until(|s| s.running.is_empty()).await;
        }
        inner.work.notify_waiters();
        inner.timer.notify_one();
        inner.store.flush()
    }

    /// Accepts nothing new, lets running tasks finish for up to the grace
    /// period ([`PoolConfig::stop_grace`]), then kills the rest; killed and
    /// waiting tasks stay in the store, queued for the next start.
    /// Idempotent.
    pub async fn stop(&self) -> Result<()> {
        self.stop_with_grace(self.inner().config.stop_grace).await
    }

    /// [`Pool::stop`] with a grace period of its own.
    pub async fn stop_with_grace(&self, grace: Duration) -> Result<()> {
        let inner = self.inner();
        if inner.phase() < Phase::Stopping {
            inner.phase.store(Phase::Stopping as u8, Ordering::SeqCst);
        }
        inner.work.notify_waiters();
        inner.timer.notify_one();
        let finished = tokio::time::timeout(grace, inner.until(|s| s.running.is_empty())).await;
        if finished.is_err() {
            inner.kill_running_for_stop();
            inner.until(|s| s.running.is_empty()).await;
        }
        inner.phase.store(Phase::Stopped as u8, Ordering::SeqCst);
        inner.work.notify_waiters();
        inner.timer.notify_one();
        inner.store.flush()
    }
}

/// A submitted task. Resolves to its result; dropping it does not affect
/// the task.
#[derive(Clone, Debug)]
pub struct TaskHandle {
    id: TaskId,
    pool: Pool,
}

impl TaskHandle {
    /// The task's id.
    pub fn id(&self) -> TaskId {
        self.id
    }

    /// Waits for the result.
    pub async fn wait(&self) -> Result<TaskResult> {
        self.pool.wait(self.id).await
    }

    /// Waits for the result, blocking the thread. Must not be called from
    /// async code.
    pub fn wait_blocking(&self) -> Result<TaskResult> {
        let handle = self.pool.executor().handle().clone();
        handle.block_on(self.pool.wait(self.id))
    }

    /// Cancels the task.
    pub fn cancel(&self) -> Result<CancelResult> {
        self.pool.cancel(self.id)
    }
}

/// What storing a new task did.
pub(crate) enum Stored {
    /// Stored this new record.
    New(Box<TaskRecord>),
    /// Its idempotency key belongs to this task; nothing was stored.
    Existing(TaskId),
}

/// Stores a new task naming `module` (already stored), as submitted: the
/// one place a task record is made. Used by the pool, and by the command
/// line to queue a task in a data directory without running a pool.
pub(crate) fn store_task(
    executor: &Executor,
    store: &dyn Store,
    module: ModuleHash,
    spec: TaskSpec,
) -> Result<Stored> {
    spec.validate()?;
    if let Some(key) = &spec.idempotency_key
        && let Some(existing) = store.by_key(key)?
    {
        return Ok(Stored::Existing(existing));
    }
    let limits = executor.limits(&spec.limits)?;
    let now = now_millis();
    let run_at = resolve_time(spec.start, now);
    let record = TaskRecord {
        id: TaskId::new(),
        module,
        input: spec.input,
        priority: spec.priority,
        limits,
        max_attempts: spec.max_attempts,
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
        seq: store.next_seq()?,
        submitted_at: now,
        updated_at: now,
        finished_at: None,
        attempts: Vec::new(),
        outcome: None,
        output: Vec::new(),
        log: String::new(),
        progress: None,
    };
    match store.insert(&record)? {
        Inserted::New => Ok(Stored::New(Box::new(record))),
        Inserted::Existing(id) => Ok(Stored::Existing(id)),
    }
}

impl Inner {
    fn phase(&self) -> Phase {
        match self.phase.load(Ordering::SeqCst) {
            0 => Phase::Open,
            1 => Phase::Closing,
            2 => Phase::Stopping,
            _ => Phase::Stopped,
        }
    }

    fn check_open(&self) -> Result<()> {
        if self.phase() == Phase::Open {
            Ok(())
        } else {
            Err(Error::ShutDown)
        }
    }

    fn lock(&self) -> MutexGuard<'_, Sched> {
        self.sched.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn emit(&self, id: TaskId, kind: EventKind) {
        tracing::debug!(task = %id, event = ?kind, "task event");
        // No subscriber is not an error.
        let _ = self.events.send(Event {
            id,
            at: now_millis(),
            kind,
        });
    }

    fn module_for(&self, module: &ModuleRef) -> Result<CompiledModule> {
        match module {
            ModuleRef::Hash(hash) => self.compiled(hash),
            ModuleRef::Bytes(bytes) => {
                let compiled = self.register_stored(bytes)?;
                self.store.put_module(&compiled.hash(), bytes)?;
                Ok(compiled)
            }
        }
    }

    /// A module compiled, from the executor's cache or from the store.
    fn compiled(&self, hash: &ModuleHash) -> Result<CompiledModule> {
        if let Some(module) = self.executor.module(hash) {
            return Ok(module);
        }
        let bytes = self
            .store
            .module(hash)?
            .ok_or(Error::UnknownModule(*hash))?;
        self.register_stored(&bytes)
    }

    // --- module run settings (issue 12) -----------------------------------
    /// Registers `bytes` with the executor, with the run settings the store
    /// keeps for them: the executor has a module's settings whichever way
    /// it came to compile it (after a restart too).
    fn register_stored(&self, bytes: &[u8]) -> Result<CompiledModule> {
        let module = self.executor.register(bytes)?;
        if let Some(settings) = self.store.module_settings(&module.hash())? {
            self.executor.set_module_settings(&module, settings)?;
        }
        Ok(module)
    }
    // --- end of module run settings ---------------------------------------

    fn store_new_task(&self, spec: TaskSpec) -> Result<Stored> {
        spec.validate()?;
        if let Some(key) = &spec.idempotency_key
            && let Some(existing) = self.store.by_key(key)?
        {
            return Ok(Stored::Existing(existing));
        }
        let module = self.module_for(&spec.module)?;
        store_task(&self.executor, self.store.as_ref(), module.hash(), spec)
    }

    /// Puts a stored waiting task into the index and wakes whoever should
    /// look at it.
    fn enqueue(&self, record: TaskRecord, holds_room: bool) {
        let state = record.state;
        let earlier = self.lock().insert(Pending { record, holds_room });
        if state == TaskState::Queued {
            self.work.notify_one();
        }
        if earlier {
            self.timer.notify_one();
        }
    }

    /// Rebuilds the index from the store's unfinished tasks.
    fn recover(&self) -> Result<()> {
        let now = now_millis();
        let mut resumed = 0usize;
        for mut record in self.store.unfinished()? {
            if record.state == TaskState::Running {
                // The process died while it ran: the interrupted run counts.
                let from = record.state;
                if record.attempts.len() >= record.max_attempts as usize {
                    record.state = TaskState::Failed;
                    let outcome = Outcome::HostError(
                        "the host stopped while the task ran, and it has no attempts left".into(),
                    );
                    record.outcome = Some(outcome);
                    record.finished_at = Some(now);
                } else {
                    record.state = TaskState::Queued;
                }
                record.updated_at = now;
                self.store.update(&record, from)?;
                if record.state.is_final() {
                    continue;
                }
            }
            let holds_room = match self.queue_room.try_acquire() {
                Ok(permit) => {
                    permit.forget();
                    true
                }
                // More waiting tasks than the limit (it was lowered): they
                // all run; new submissions wait until there is room.
                Err(_) => false,
            };
            self.lock().insert(Pending { record, holds_room });
            resumed += 1;
        }
        if resumed > 0 {
            tracing::info!(tasks = resumed, "resumed unfinished tasks from the store");
        }
        Ok(())
    }

    async fn until(&self, done: impl Fn(&Sched) -> bool) {
        loop {
            let notified = self.quiet.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if done(&self.lock()) {
                return;
            }
            notified.await;
        }
    }

    fn cancel(&self, id: TaskId) -> Result<CancelResult> {
        for _ in 0..100 {
            let mut sched = self.lock();
            if let Some(running) = sched.running.get(&id) {
                running.cancel.cancel();
                return Ok(CancelResult::Killed);
            }
            if let Some(pending) = sched.remove_pending(&id) {
                let mut record = pending.record;
                let from = record.state;
                let now = now_millis();
                record.state = TaskState::Cancelled;
                record.outcome = Some(Outcome::Cancelled);
                record.updated_at = now;
                record.finished_at = Some(now);
                if let Err(e) = self.store.update(&record, from) {
                    // Keep it waiting rather than lose it.
                    record.state = from;
                    record.outcome = None;
                    record.finished_at = None;
                    sched.insert(Pending {
                        record,
                        holds_room: pending.holds_room,
                    });
                    return Err(e);
                }
                drop(sched);
                if pending.holds_room {
                    self.queue_room.add_permits(1);
                }
                self.finished(&record, EventKind::Cancelled);
                return Ok(CancelResult::Cancelled);
            }
            drop(sched);
            match self.store.get(&id)? {
                None => return Err(Error::NotFound(id)),
                Some(record) if record.state.is_final() => {
                    return Ok(CancelResult::AlreadyFinished(record.state));
                }
                // Between the index and the store (a recovery or a
                // transition in flight): look again.
                Some(_) => std::thread::yield_now(),
            }
        }
        Err(Error::Host(format!(
            "task {id} is neither waiting nor running nor finished"
        )))
    }

    async fn wait(&self, id: TaskId) -> Result<TaskResult> {
        let (sender, receiver) = oneshot::channel();
        self.waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(id)
            .or_default()
            .push(sender);
        // Registered first, looked up second: a result stored in between is
        // not missed.
        let record = self.store.get(&id)?.ok_or(Error::NotFound(id))?;
        if let Some(result) = record.result() {
            return Ok(result);
        }
        receiver.await.map_err(|_| Error::ShutDown)
    }

    /// After a task reached a final state in the store: results to waiters,
    /// the event, the counters.
    fn finished(&self, record: &TaskRecord, kind: EventKind) {
        let waiters = self
            .waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&record.id);
        if let Some(waiters) = waiters
            && let Some(result) = record.result()
        {
            for waiter in waiters {
                let _ = waiter.send(result.clone());
            }
        }
        self.emit(record.id, kind);
        self.finished.fetch_add(1, Ordering::Relaxed);
        self.recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .tick();
        self.quiet.notify_waiters();
    }

    fn kill_running_for_stop(&self) {
        let mut sched = self.lock();
        for running in sched.running.values_mut() {
            running.for_stop = true;
            running.cancel.cancel();
        }
    }

    /// The last handle is gone: stop at once, requeueing running tasks.
    fn halt(&self) {
        if self.phase() == Phase::Stopped {
            return;
        }
        self.phase.store(Phase::Stopping as u8, Ordering::SeqCst);
        self.kill_running_for_stop();
        self.phase.store(Phase::Stopped as u8, Ordering::SeqCst);
        self.work.notify_waiters();
        self.timer.notify_one();
        if let Err(e) = self.store.flush() {
            tracing::error!(error = %e, "flushing the store when the pool was dropped");
        }
    }

    /// Takes the next ready task and marks it running, in the store and the
    /// index at once.
    fn take_next(&self) -> Option<(TaskRecord, CancellationToken)> {
        let mut sched = self.lock();
        while let Some(pending) = sched.pop_ready() {
            let mut record = pending.record;
            let from = record.state;
            let now = now_millis();
            if record.expires_at.is_some_and(|at| at <= now) {
                self.expire(&mut sched, record, pending.holds_room);
                continue;
            }
            record.state = TaskState::Running;
            record.updated_at = now;
            let number = u32::try_from(record.attempts.len() + 1).unwrap_or(u32::MAX);
            record.attempts.push(Attempt {
                number,
                outcome: None,
                started_at: now,
                duration_us: 0,
                fuel_consumed: None,
            });
            match self.store.update(&record, from) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::error!(task = %record.id, error = %e, "cannot mark task running; retrying in 1 s");
                    record.state = from;
                    record.attempts.pop();
                    record.run_at = now + 1000;
                    record.state = TaskState::Scheduled;
                    sched.insert(Pending {
                        record,
                        holds_room: pending.holds_room,
                    });
                    self.timer.notify_one();
                    continue;
                }
            }
            if pending.holds_room {
                self.queue_room.add_permits(1);
            }
            let cancel = CancellationToken::new();
            sched.running.insert(
                record.id,
                RunningTask {
                    cancel: cancel.clone(),
                    for_stop: false,
                },
            );
            drop(sched);
            self.emit(record.id, EventKind::Started { attempt: number });
            return Some((record, cancel));
        }
        None
    }

    /// Marks a waiting task expired (called with the index locked).
    fn expire(&self, sched: &mut Sched, mut record: TaskRecord, holds_room: bool) {
        let from = record.state;
        let now = now_millis();
        record.state = TaskState::Expired;
        record.outcome = None;
        record.updated_at = now;
        record.finished_at = Some(now);
        match self.store.update(&record, from) {
            Ok(_) => {
                if holds_room {
                    self.queue_room.add_permits(1);
                }
                self.finished(&record, EventKind::Expired);
            }
            Err(e) => {
                tracing::error!(task = %record.id, error = %e, "cannot mark task expired");
                record.state = from;
                record.finished_at = None;
                sched.insert(Pending { record, holds_room });
            }
        }
    }

    async fn run(&self, mut record: TaskRecord, cancel: CancellationToken) {
        let id = record.id;
        let report = match self.compiled(&record.module) {
            Ok(module) => {
                let events = self.events.clone();
                let on_progress: crate::ProgressFn = Arc::new(move |done, total| {
                    let _ = events.send(Event {
                        id,
                        at: now_millis(),
                        kind: EventKind::Progress { done, total },
                    });
                });
                let env = [
                    ("WPOOL_TASK_ID".to_string(), id.to_string()),
                    (
                        "WPOOL_ATTEMPT".to_string(),
                        record.attempts.len().to_string(),
                    ),
                ];
                self.executor
                    .run(
                        &module,
                        record.input.clone(),
                        &record.limits,
                        &cancel,
                        Some(on_progress),
                        &env,
                    )
                    .await
            }
            Err(Error::InvalidModule(message)) => {
                crate::RunReport::without_run(Outcome::InvalidModule(message))
            }
            Err(e) => crate::RunReport::without_run(Outcome::HostError(e.to_string())),
        };
        let now = now_millis();
        if let Some(attempt) = record.attempts.last_mut() {
            attempt.outcome = Some(report.outcome.clone());
            attempt.duration_us = u64::try_from(report.duration.as_micros()).unwrap_or(u64::MAX);
            attempt.fuel_consumed = report.fuel_consumed;
        }
        record.output = report.output;
        record.log = report.log;
        record.progress = report.progress.or(record.progress);
        record.updated_at = now;

        let mut sched = self.lock();
        let for_stop = sched.running.get(&id).is_some_and(|r| r.for_stop);
        let attempts = u32::try_from(record.attempts.len()).unwrap_or(u32::MAX);
        let outcome = report.outcome;
        let kind = if for_stop && outcome == Outcome::Cancelled {
            record.state = TaskState::Queued;
            EventKind::Requeued
        } else if outcome.is_success() {
            record.state = TaskState::Succeeded;
            EventKind::Succeeded
        } else if outcome == Outcome::Cancelled {
            record.state = TaskState::Cancelled;
            EventKind::Cancelled
        } else if outcome.is_retryable() && attempts < record.max_attempts {
            record.state = TaskState::Scheduled;
            record.run_at = now.saturating_add(
                u64::try_from(record.backoff.delay(attempts).as_millis()).unwrap_or(u64::MAX),
            );
            EventKind::Retrying {
                attempt: attempts,
                outcome: outcome.clone(),
                run_at: record.run_at,
            }
        } else {
            record.state = TaskState::Failed;
            EventKind::Failed {
                outcome: outcome.clone(),
            }
        };
        if record.state.is_final() {
            record.outcome = Some(outcome);
            record.finished_at = Some(now);
        }
        let stored = self.store.update(&record, TaskState::Running);
        sched.running.remove(&id);
        let waiting_again = matches!(kind, EventKind::Retrying { .. })
            && self.phase() < Phase::Stopping
            && matches!(stored, Ok(true));
        if waiting_again {
            sched.insert(Pending {
                record: record.clone(),
                holds_room: false,
            });
        }
        drop(sched);
        match stored {
            Ok(true) => {}
            Ok(false) => {
                tracing::error!(task = %id, "task changed state while it ran; its result is dropped")
            }
            Err(e) => {
                // The store still says running: the task runs again at the
                // next start (at least once).
                tracing::error!(task = %id, error = %e, "cannot record the task's result");
                self.quiet.notify_waiters();
                return;
            }
        }
        if record.state.is_final() {
            self.finished(&record, kind);
        } else {
            self.emit(id, kind);
            self.timer.notify_one();
            self.quiet.notify_waiters();
        }
    }

    /// Moves due delayed tasks to the ready heap and expires overdue ones;
    /// returns when the timer should look again.
    fn tick(&self) -> Option<u64> {
        let now = now_millis();
        let mut sched = self.lock();
        let mut woke = 0;
        while let Some(pending) = sched.pop_due(now) {
            let mut record = pending.record;
            if record.state == TaskState::Scheduled {
                record.state = TaskState::Queued;
                record.updated_at = now;
                match self.store.update(&record, TaskState::Scheduled) {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(e) => {
                        tracing::error!(task = %record.id, error = %e, "cannot queue due task; retrying in 1 s");
                        record.state = TaskState::Scheduled;
                        record.run_at = now + 1000;
                        sched.insert(Pending {
                            record,
                            holds_room: pending.holds_room,
                        });
                        continue;
                    }
                }
            }
            sched.insert(Pending {
                record,
                holds_room: pending.holds_room,
            });
            woke += 1;
        }
        while let Some(pending) = sched.pop_expired(now) {
            self.expire(&mut sched, pending.record, pending.holds_room);
        }
        let next = sched.next_wake();
        let drained = sched.pending.is_empty() && sched.running.is_empty();
        drop(sched);
        for _ in 0..woke {
            self.work.notify_one();
        }
        if drained {
            self.quiet.notify_waiters();
        }
        next
    }
}

async fn worker(guard: BackgroundGuard, index: usize) {
    let inner = guard.inner();
    loop {
        let notified = inner.work.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let phase = inner.phase();
        if phase >= Phase::Stopping {
            break;
        }
        if index < inner.active_workers.load(Ordering::Relaxed) {
            if let Some((record, cancel)) = inner.take_next() {
                inner.run(record, cancel).await;
                continue;
            }
            if phase == Phase::Closing {
                inner.quiet.notify_waiters();
            }
        }
        notified.await;
    }
    inner.quiet.notify_waiters();
}

async fn timer(guard: BackgroundGuard) {
    let inner = guard.inner();
    loop {
        let notified = inner.timer.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if inner.phase() >= Phase::Stopping {
            break;
        }
        let next = inner.tick();
        let sleep_ms = next.map_or(3_600_000, |at| at.saturating_sub(now_millis()).max(1));
        tokio::select! {
            () = notified => {}
            () = tokio::time::sleep(Duration::from_millis(sleep_ms)) => {}
        }
    }
}

/// Removes finished tasks past retention, now and then, while the pool
/// lives.
async fn sweeper(inner: std::sync::Weak<Inner>) {
    let period = {
        let Some(inner) = inner.upgrade() else { return };
        (inner.config.retention / 4).clamp(Duration::from_millis(100), Duration::from_secs(60))
    };
    loop {
        tokio::time::sleep(period).await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.phase() >= Phase::Stopping {
            return;
        }
        let retention = u64::try_from(inner.config.retention.as_millis()).unwrap_or(u64::MAX);
        let before = now_millis().saturating_sub(retention);
        match inner.store.purge_finished(before, inner.config.max_results) {
            Ok(0) => {}
            Ok(n) => {
                tracing::debug!(removed = n, "retention removed finished tasks");
                if inner.config.gc_modules {
                    match inner.store.gc_modules() {
                        Ok(0) => {}
                        Ok(n) => tracing::debug!(removed = n, "removed modules no task uses"),
                        Err(e) => {
                            tracing::warn!(error = %e, "module collection failed; will retry")
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "retention sweep failed; will retry"),
        }
    }
}
