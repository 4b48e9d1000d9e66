//! The pool: runs the tasks of a [`Backend`] on an [`Executor`], with
//! priorities, delays, retries, cancel, results and events.
//!
//! # How it works
//!
//! The backend owns the queue; the pool owns the workers. A dispatcher asks
//! the backend for as many ready tasks as there are free workers
//! ([`Backend::claim`]), each under a lease, and runs each on the
//! executor; the run's end is recorded under that lease
//! ([`Backend::complete`]), durably, before any waiter, event or counter
//! sees it. A heartbeat renews the leases of running tasks and expires the
//! leases of tasks whose host stopped renewing them; a timer moves delayed
//! tasks to the queue at their time. No lock of the pool is held while a
//! task runs or while the backend is called.
//!
//! While the store is out of reach ([`Error::Unavailable`]) every loop
//! waits for it with growing pauses (up to 2 s) and says so in the log
//! once, then every 30 s; a run's end is kept and recorded once the store
//! is back (`outage`).
//!
//! Files: `config` (setup), `submit` (submission and backpressure),
//! `worker` (dispatcher, runs, heartbeat, timer, retention), `outage`,
//! `events`.

mod config;
pub(crate) mod events;
mod outage;
mod rate;
mod submit;
mod worker;

#[cfg(feature = "cli")]
pub(crate) use submit::new_record;

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, broadcast, oneshot};

pub use self::config::{
    DEFAULT_CLAIM_AHEAD, DEFAULT_MAX_STORED_OUTPUT, MAX_CLAIM_AHEAD, PoolConfig,
};
use self::events::{Event, EventKind, Events};
use crate::backend::{Backend, Cancelled, EmbeddedBackend};
use crate::executor::SharedCancel;
use crate::store::{MemoryStore, StateCounts, Store, StoredModule, TaskFilter};
use crate::task::{
    IdMap, Lease, Millis, ModuleHash, TaskId, TaskRecord, TaskResult, TaskSpec, TaskState,
    now_millis,
};
use crate::{Error, Executor, Result};

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
    /// All tasks in the backend.
    pub total: u64,
    /// Workers allowed to take tasks.
    pub workers: usize,
    /// Workers running a task now.
    pub busy: usize,
    /// Workers free now.
    pub idle: usize,
    /// Tasks finished (any final state) by this pool since it started.
    pub finished: u64,
    /// Tasks finished per second over the last 10 seconds.
    pub finished_per_sec: f64,
    /// How long the pool has run, in seconds.
    pub uptime_secs: f64,
    /// Whether the pool is paused ([`Pool::pause`]).
    pub paused: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
#[repr(u8)]
enum Phase {
    Open = 0,
    Closing = 1,
    Stopping = 2,
    Stopped = 3,
}

/// A task claimed ahead, waiting for a worker.
struct Ahead {
    /// Shared with the store that claimed it, where that keeps its
    /// records in memory.
    record: Arc<TaskRecord>,
    lease: Lease,
    cancel: SharedCancel,
}

/// A task this pool runs now (or claimed ahead, or whose end it records).
struct Running {
    lease: Lease,
    /// Shared with the run's [`Ahead`].
    cancel: SharedCancel,
    /// Killed by a pool stop: put it back in the queue rather than record
    /// it cancelled.
    for_stop: bool,
    /// The last progress the run reported (the record has it only once
    /// the run ends).
    progress: Option<(u64, u64)>,
}

/// Ends of runs written and not yet durable ([`Inner::show_after_flush`]).
#[derive(Default)]
struct Unflushed {
    /// The run's task, its record as written, how long the run took.
    ends: Vec<(TaskId, Arc<TaskRecord>, Duration)>,
    /// Whether an async task shows them (it looks again before it ends).
    showing: bool,
}

pub(crate) struct Inner {
    executor: Executor,
    backend: Arc<dyn Backend>,
    config: PoolConfig,
    running: Mutex<IdMap<Running>>,
    /// The dispatcher waits here for work or free workers.
    work: Notify,
    /// The timer waits here for an earlier deadline.
    timer: Notify,
    /// `close`/`stop` wait here for tasks to end.
    quiet: Notify,
    events: broadcast::Sender<Event>,
    /// Whether anyone subscribed to `events`: until then an event is not
    /// sent. A send takes the channel's lock, which the submitters and the
    /// workers would otherwise share for every task's three events.
    subscribed: AtomicBool,
    waiters: Mutex<IdMap<Waiters>>,
    /// Results of short runs not yet handed to their waiters, with those
    /// waiters: a worker that goes on to another task hands them over in
    /// batches (see [`Inner::hand_over`]).
    deliveries: Mutex<Held>,
    /// The epoch tick over [`DELIVERY_HOLD_TICKS`].
    delivery_hold: Duration,
    /// Ends of runs written and not yet durable, to be shown once a flush
    /// covers them (see [`Inner::show_after_flush`]).
    unflushed: Mutex<Unflushed>,
    phase: AtomicU8,
    /// Tasks waiting in the queue (queued or scheduled), as far as this
    /// pool knows: it counts its own submissions and every task it sees
    /// leave or re-enter the queue. Backpressure ([`PoolConfig::max_queued`])
    /// is judged by it.
    waiting: AtomicUsize,
    /// Submitters waiting for room wait here.
    room: Notify,
    /// How many submitters wait on `room` (or are about to): a task
    /// leaving the queue wakes them only if there are any, since waking
    /// nobody still takes the `Notify`'s lock, which every claim would
    /// otherwise contend for with the submitters.
    room_waiters: AtomicUsize,
    active_workers: AtomicUsize,
    /// Runs holding a worker: claimed and not yet ended. A run whose end
    /// is being recorded no longer holds one (it is still in `running`,
    /// its lease renewed, until its end is durable).
    executing: AtomicUsize,
    /// Tasks claimed ahead of the free workers
    /// ([`PoolConfig::claim_ahead`]), in the order claimed: each is in
    /// `running` too (its lease renewed, a cancel reaching its token).
    ahead: Mutex<VecDeque<Ahead>>,
    /// How many tasks `ahead` holds, set under its lock: a run's end
    /// reads it without taking the lock, which every worker's end would
    /// otherwise take.
    ahead_len: AtomicUsize,
    /// Mean run time of recent runs, in µs (an exponential average): how
    /// far ahead to claim.
    mean_run_us: AtomicU64,
    /// [`PoolConfig::claim_ahead`], its default resolved for the backend.
    claim_ahead: usize,
    /// Paused: no task is claimed until resumed; running tasks go on.
    paused: AtomicBool,
    finished: AtomicU64,
    recent: Mutex<rate::RateWindow>,
    started: Instant,
    background: Arc<Background>,
}

/// A pool of WASM workers over a queue backend.
///
/// Cloning is cheap and shares the pool. When the last clone (and the last
/// [`TaskHandle`]) is dropped without [`Pool::close`] or [`Pool::stop`],
/// running tasks are killed and put back in the queue.
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    inner: Arc<Inner>,
}

impl Drop for Shared {
    /// Stops at once (running tasks are killed and put back in the queue)
    /// and waits for the workers to let go of the backend, so that a data
    /// directory can be opened again as soon as this returns.
    fn drop(&mut self) {
        self.inner.halt();
        self.inner.background.wait_for_none(Duration::from_secs(30));
    }
}

/// Counts the pool's background tasks (dispatcher, runs, timer) still
/// alive.
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

/// The most results [`Inner::hand_over`] holds before handing them over.
const DELIVERY_BATCH: usize = 32;

/// The most run time [`Inner::hand_over`] holds results for, in epoch
/// ticks (the pool's measure of a short run): a tenth, 100 µs at the
/// default tick. That is the runs that ended with the results held,
/// summed; a run this long or longer has its result handed over at once.
const DELIVERY_HOLD_TICKS: u32 = 10;

/// Results held by [`Inner::hand_over`].
#[derive(Default)]
struct Held {
    /// Each result with its waiters.
    results: Vec<(Arc<TaskRecord>, Waiters)>,
    /// The runs that ended with them, summed.
    runs: Duration,
}

/// Those who wait for one task's result. A record goes to each shared:
/// the channel then holds a pointer, not a record, and the worker that
/// hands it over copies nothing (each waiter copies what its result
/// holds, on its own thread).
type Waiters = Vec<oneshot::Sender<Arc<TaskRecord>>>;

/// Gives `record` to each of `waiters`.
fn send_result(waiters: Waiters, record: Arc<TaskRecord>) {
    for waiter in waiters {
        let _ = waiter.send(Arc::clone(&record));
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
            .field("backend", &self.shared.inner.backend)
            .field("config", &self.shared.inner.config)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// A pool over an in-memory queue.
    pub fn new(config: PoolConfig) -> Result<Self> {
        Self::with_store(config, Arc::new(MemoryStore::new()))
    }

    /// A pool over the embedded backend on `store`. Tasks the store holds
    /// unfinished are resumed: waiting ones keep their order and times;
    /// ones that were running when their process stopped run again, each
    /// counting an interruption (not an attempt).
    pub fn with_store(config: PoolConfig, store: Arc<dyn Store>) -> Result<Self> {
        let (backend, recovered) = EmbeddedBackend::open_reporting(store)?;
        Self::start(
            config,
            Arc::new(backend),
            Some(recovered.waiting + recovered.requeued),
        )
    }

    /// A pool over `backend`.
    pub fn with_backend(config: PoolConfig, backend: Arc<dyn Backend>) -> Result<Self> {
        Self::start(config, backend, None)
    }

    /// `waiting`: how many tasks wait in the backend's queue, if known;
    /// else the pool asks the backend before it claims anything.
    fn start(
        config: PoolConfig,
        backend: Arc<dyn Backend>,
        waiting: Option<usize>,
    ) -> Result<Self> {
        config.validate()?;
        let executor = Executor::new(&config.engine)?;
        let workers = config.engine.workers;
        let claim_ahead = config.claim_ahead_for(backend.as_ref());
        let inner = Arc::new(Inner {
            executor,
            backend,
            running: Mutex::new(IdMap::default()),
            work: Notify::new(),
            timer: Notify::new(),
            quiet: Notify::new(),
            events: broadcast::channel(16_384).0,
            subscribed: AtomicBool::new(false),
            waiters: Mutex::new(IdMap::default()),
            deliveries: Mutex::new(Held::default()),
            delivery_hold: config.engine.epoch_tick / DELIVERY_HOLD_TICKS,
            unflushed: Mutex::default(),
            phase: AtomicU8::new(Phase::Open as u8),
            waiting: AtomicUsize::new(waiting.unwrap_or(0)),
            room: Notify::new(),
            room_waiters: AtomicUsize::new(0),
            active_workers: AtomicUsize::new(workers),
            executing: AtomicUsize::new(0),
            ahead: Mutex::new(VecDeque::new()),
            ahead_len: AtomicUsize::new(0),
            mean_run_us: AtomicU64::new(0),
            claim_ahead,
            paused: AtomicBool::new(false),
            finished: AtomicU64::new(0),
            recent: Mutex::new(rate::RateWindow::default()),
            started: Instant::now(),
            background: Arc::default(),
            config,
        });
        worker::start(&inner, waiting.is_none());
        if let Some(remote) = inner.backend.remote_events() {
            inner
                .executor
                .handle()
                .spawn(events::forward_remote(Arc::downgrade(&inner), remote));
        }
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

    /// The backend that owns the pool's queue.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.inner().backend
    }

    /// Validates, compiles and stores a module; returns its hash, by which
    /// tasks can name it. Compiling runs on a blocking thread (a large
    /// module takes seconds), not on the caller's async runtime. A module
    /// with run settings stored keeps them.
    pub async fn register(&self, bytes: &[u8]) -> Result<ModuleHash> {
        let module = self.inner().register_stored(bytes).await?;
        self.inner()
            .backend
            .put_module(&module.hash(), bytes)
            .await?;
        Ok(module.hash())
    }

    /// Like [`Pool::register`], and sets the module's run settings
    /// (arguments, environment, success codes, scratch directory; see
    /// [`ModuleSettings`](crate::ModuleSettings)), stored with it. Every
    /// task of the module that starts afterwards runs with them, including
    /// tasks already queued. Registering again with other settings replaces
    /// them; [`Pool::register`] leaves them as they are.
    pub async fn register_with(
        &self,
        bytes: &[u8],
        settings: crate::ModuleSettings,
    ) -> Result<ModuleHash> {
        let inner = self.inner();
        let module = inner.compile(bytes).await?;
        inner
            .executor
            .set_module_settings(&module, settings.clone())?;
        inner.backend.put_module(&module.hash(), bytes).await?;
        inner
            .backend
            .put_module_settings(&module.hash(), &settings)
            .await?;
        Ok(module.hash())
    }

    /// Sets the run settings of a stored module, replacing any (default
    /// settings remove them): every task of it that starts afterwards runs
    /// with them, including tasks already queued. Refused with
    /// [`Error::UnknownModule`] if the module is not stored, and with
    /// [`Error::InvalidSettings`] if the settings are not valid for it.
    pub async fn set_module_settings(
        &self,
        hash: &ModuleHash,
        settings: crate::ModuleSettings,
    ) -> Result<()> {
        let inner = self.inner();
        let module = inner.compiled(hash).await?;
        inner
            .executor
            .set_module_settings(&module, settings.clone())?;
        inner.backend.put_module_settings(hash, &settings).await
    }

    /// A module's run settings (the default if it has none).
    pub async fn module_settings(&self, hash: &ModuleHash) -> Result<crate::ModuleSettings> {
        Ok(self
            .inner()
            .backend
            .module_settings(hash)
            .await?
            .unwrap_or_default())
    }

    /// Deletes a module (and its run settings) from the backend and the
    /// compiled cache, unless an unfinished task uses it
    /// ([`Error::ModuleInUse`]); `false` if there was no such module.
    pub async fn delete_module(&self, hash: &ModuleHash) -> Result<bool> {
        let deleted = self.inner().backend.delete_module(hash).await?;
        if deleted {
            self.inner()
                .backend
                .put_module_settings(hash, &crate::ModuleSettings::default())
                .await?;
        }
        self.inner().executor.forget_module(hash);
        Ok(deleted)
    }

    /// The modules in the backend.
    pub async fn modules(&self) -> Result<Vec<StoredModule>> {
        self.inner().backend.modules().await
    }

    /// Submits a task; waits for room if the queue is full. Returns once
    /// the task is stored (durably, with a durable backend).
    pub async fn submit(&self, spec: TaskSpec) -> Result<TaskHandle> {
        self.inner().check_open()?;
        self.inner().check_storage()?;
        self.inner().reserve_room(1).await?;
        // Not through a shared async function: the spec would be copied
        // into its state (see `Inner::store_new_task_now`).
        let id = match self.inner().store_new_task_now(spec) {
            submit::Now::Done(answer) => answer?.0,
            submit::Now::Later(later) => self.inner().store_new_task_later(later).await?.0,
        };
        Ok(self.handle(id))
    }

    /// Submits a task, or fails at once with [`Error::QueueFull`] if the
    /// queue is full.
    pub async fn try_submit(&self, spec: TaskSpec) -> Result<TaskHandle> {
        self.inner().check_open()?;
        self.inner().check_storage()?;
        if !self.inner().try_reserve_room(1) && !self.inner().recounted_room(1).await {
            return Err(Error::QueueFull(self.inner().config.max_queued));
        }
        let id = match self.inner().store_new_task_now(spec) {
            submit::Now::Done(answer) => answer?.0,
            submit::Now::Later(later) => self.inner().store_new_task_later(later).await?.0,
        };
        Ok(self.handle(id))
    }

    /// Submits many tasks in one write and one flush; waits for room for
    /// all of them. Each spec is checked on its own: the answer has, in
    /// order, a handle for each task stored (or already holding its
    /// idempotency key) and the error of each spec refused, and the specs
    /// refused do not stop the others. A failure of the backend itself
    /// fails the whole batch, storing none.
    pub async fn submit_many(
        &self,
        specs: impl IntoIterator<Item = TaskSpec>,
    ) -> Result<Vec<Result<TaskHandle>>> {
        self.inner().check_open()?;
        self.inner().check_storage()?;
        let specs: Vec<TaskSpec> = specs.into_iter().collect();
        if specs.is_empty() {
            return Ok(Vec::new());
        }
        self.inner().reserve_room(specs.len()).await?;
        let ids = self.inner().store_new_tasks(specs).await?;
        Ok(ids
            .into_iter()
            .map(|id| id.map(|(id, _)| self.handle(id)))
            .collect())
    }

    /// Like [`Pool::submit_many`], but fails at once with
    /// [`Error::QueueFull`] (storing none) unless there is room for the
    /// whole batch now, and says of each task stored whether this call
    /// created it or an idempotency key named an existing one (a key given
    /// twice in one batch names the first of them).
    ///
    /// A batch larger than the whole queue goes in when the queue is
    /// empty. Only a spec's own faults (malformed, a limit out of range, a
    /// module unknown or invalid) are answered for that spec; any other
    /// failure fails the whole batch, storing none.
    pub async fn try_submit_many(
        &self,
        specs: impl IntoIterator<Item = TaskSpec>,
    ) -> Result<Vec<Result<Submitted>>> {
        self.inner().check_open()?;
        self.inner().check_storage()?;
        let specs: Vec<TaskSpec> = specs.into_iter().collect();
        if specs.is_empty() {
            return Ok(Vec::new());
        }
        let n = specs.len();
        if !self.inner().try_reserve_room(n) && !self.inner().recounted_room(n).await {
            return Err(Error::QueueFull(self.inner().config.max_queued));
        }
        let ids = self.inner().store_new_tasks(specs).await?;
        Ok(ids
            .into_iter()
            .map(|id| {
                id.map(|(id, created)| Submitted {
                    handle: self.handle(id),
                    created,
                })
            })
            .collect())
    }

    /// Pauses the pool: it claims no task until [`Pool::resume`]; tasks
    /// running now finish, tasks it claimed ahead
    /// ([`PoolConfig::claim_ahead`]) go back to the queue, and submissions
    /// are still taken. For this pool only: other hosts on a shared backend
    /// go on.
    pub fn pause(&self) {
        self.inner().paused.store(true, Ordering::SeqCst);
        // The dispatcher puts back what was claimed ahead.
        self.inner().work.notify_one();
    }

    /// Resumes a paused pool.
    pub fn resume(&self) {
        self.inner().paused.store(false, Ordering::SeqCst);
        self.inner().work.notify_one();
    }

    /// Whether the pool is paused.
    pub fn is_paused(&self) -> bool {
        self.inner().paused.load(Ordering::SeqCst)
    }

    /// Runs a final task again, as a new task: a copy with the same module,
    /// input, limits, priority, attempts, backoff and labels (plus the
    /// label `retry_of` naming the original, when there is room for it),
    /// and no idempotency key, delay or expiry. The original stays as it
    /// ended. Refused with [`Error::NotFinal`] for a task not final yet.
    pub async fn retry(&self, id: TaskId) -> Result<TaskHandle> {
        let record = self.status(id).await?;
        if !record.state.is_final() {
            return Err(Error::NotFinal(id, record.state));
        }
        let input = match &record.input {
            crate::task::Payload::Inline(bytes) => bytes.clone(),
            kept => {
                self.inner()
                    .backend
                    .read_payload(&id, crate::task::Slot::Input, kept)
                    .await?
            }
        };
        let limits = record.limits;
        let mut spec = TaskSpec::new(record.module, input)
            .priority(record.priority)
            .max_attempts(record.max_attempts)
            .max_interruptions(record.max_interruptions)
            .backoff(record.backoff)
            .limits(crate::LimitOverrides {
                timeout: Some(limits.timeout),
                fuel: limits.fuel,
                memory: Some(limits.memory),
                max_output: Some(limits.max_output),
                max_log: Some(limits.max_log),
            });
        for (key, value) in record.labels {
            spec = spec.label(key, value);
        }
        if spec.labels.len() < crate::MAX_LABELS && !spec.labels.contains_key("retry_of") {
            spec = spec.label("retry_of", id.to_string());
        }
        self.submit(spec).await
    }

    /// Deletes final tasks (with their results and stored payloads); tasks
    /// not final and unknown ids are left alone. Returns the ids deleted.
    pub async fn delete(&self, ids: &[TaskId]) -> Result<Vec<TaskId>> {
        self.inner().backend.delete_finished(ids).await
    }

    /// Deletes every final task matching `filter` (its state, if given,
    /// must be final; `before` and `limit` are ignored), a page at a time.
    /// Returns how many were deleted.
    pub async fn purge(&self, filter: &TaskFilter) -> Result<u64> {
        if filter.state.is_some_and(|s| !s.is_final()) {
            return Err(Error::InvalidTask(format!(
                "only final tasks can be purged, not {} ones: cancel them first",
                filter.state.map(|s| s.to_string()).unwrap_or_default()
            )));
        }
        let states: Vec<TaskState> = match filter.state {
            Some(state) => vec![state],
            None => TaskState::ALL
                .into_iter()
                .filter(|s| s.is_final())
                .collect(),
        };
        let mut deleted = 0u64;
        for state in states {
            loop {
                let page = TaskFilter {
                    state: Some(state),
                    labels: filter.labels.clone(),
                    before: None,
                    limit: 1000,
                };
                let ids: Vec<TaskId> = self
                    .inner()
                    .backend
                    .list(&page)
                    .await?
                    .iter()
                    .map(|t| t.id)
                    .collect();
                if ids.is_empty() {
                    break;
                }
                let removed = self.delete(&ids).await?;
                deleted += removed.len() as u64;
                if removed.is_empty() {
                    break;
                }
            }
        }
        Ok(deleted)
    }

    /// A handle to an existing task (to wait for it).
    pub fn handle(&self, id: TaskId) -> TaskHandle {
        TaskHandle {
            id,
            pool: self.clone(),
        }
    }

    /// Cancels a task: a waiting one never runs; a running one is killed
    /// (on whichever host runs it).
    pub async fn cancel(&self, id: TaskId) -> Result<CancelResult> {
        self.inner().cancel(id).await
    }

    /// A task's record (state, spec, attempts, interruptions; the result
    /// once final).
    pub async fn status(&self, id: TaskId) -> Result<TaskRecord> {
        let mut record = self
            .inner()
            .backend
            .get(&id)
            .await?
            .ok_or(Error::NotFound(id))?;
        // A task running here: its live progress, which the record gets
        // only when the run ends.
        if record.state == TaskState::Running
            && let Some(progress) = self
                .inner()
                .lock_running()
                .get(&id)
                .and_then(|r| r.progress)
        {
            record.progress = Some(progress);
        }
        Ok(record)
    }

    /// A task's result, or `None` while it has not finished.
    pub async fn result(&self, id: TaskId) -> Result<Option<TaskResult>> {
        let record = self.status(id).await?;
        if !record.state.is_final() {
            return Ok(None);
        }
        self.inner().result_of(Arc::new(record)).await.map(Some)
    }

    /// Waits for a task's result.
    pub async fn wait(&self, id: TaskId) -> Result<TaskResult> {
        let inner = self.inner();
        if let Some(result) = inner.final_result_now(&id) {
            return result;
        }
        let record = inner.wait(id).await?;
        inner.result_of(record).await
    }

    /// Waits at most `timeout` for a task's result; `None` if it has not
    /// finished by then.
    pub async fn wait_timeout(&self, id: TaskId, timeout: Duration) -> Result<Option<TaskResult>> {
        match tokio::time::timeout(timeout, self.wait(id)).await {
            Ok(result) => result.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Waits at most `timeout` for a task to be final; its record then
    /// (whose output may be a file of the store's: nothing large is read).
    pub(crate) async fn wait_record_timeout(
        &self,
        id: TaskId,
        timeout: Duration,
    ) -> Result<Option<Arc<TaskRecord>>> {
        match tokio::time::timeout(timeout, self.inner().wait(id)).await {
            Ok(record) => record.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Tasks matching `filter`, newest first. For the next page, pass the
    /// last id of this one as `filter.before`.
    pub async fn list(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>> {
        self.inner().backend.list(filter).await
    }

    /// The events of every task from now on.
    pub fn subscribe(&self) -> Events {
        let inner = self.inner();
        inner.subscribed.store(true, Ordering::SeqCst);
        Events(inner.events.subscribe())
    }

    /// A snapshot of counts, workers and throughput.
    pub async fn stats(&self) -> Result<Stats> {
        let inner = self.inner();
        let counts = inner.backend.counts().await?;
        let busy = inner.executing.load(Ordering::Relaxed);
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
                .rate_at(now_millis()),
            uptime_secs: inner.started.elapsed().as_secs_f64(),
            paused: inner.paused.load(Ordering::SeqCst),
        })
    }

    /// The most workers [`Pool::set_workers`] allows: the engine's
    /// [`max_workers`](crate::EngineConfig::max_workers).
    pub fn max_workers(&self) -> usize {
        self.inner().config.engine.slots()
    }

    /// The largest memory limit a task may have in this pool: the engine's
    /// [`max_memory`](crate::EngineConfig::max_memory).
    pub fn max_memory(&self) -> u64 {
        self.inner().config.engine.max_memory
    }

    /// Changes how many workers take tasks, while the pool runs, up to the
    /// slots the engine was built for
    /// ([`EngineConfig::max_workers`](crate::EngineConfig::max_workers)). A
    /// worker above the new count finishes its task; no task is lost or run
    /// again.
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
        self.inner().work.notify_one();
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
        // Submitters waiting for room learn that no more is taken.
        inner.room.notify_waiters();
        inner.work.notify_one();
        inner.timer.notify_one();
        if inner.phase() == Phase::Closing {
            inner.until_drained().await?;
            let _ = inner.phase.compare_exchange(
                Phase::Closing as u8,
                Phase::Stopped as u8,
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
        } else {
            inner.until_idle().await;
        }
        inner.work.notify_one();
        inner.timer.notify_one();
        inner.backend.flush().await
    }

    /// Accepts nothing new, lets running tasks finish for up to the grace
    /// period ([`PoolConfig::stop_grace`]), then kills the rest and puts
    /// them back in the queue (not counted as an attempt or an
    /// interruption); waiting tasks stay in the queue for the next start.
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
        inner.room.notify_waiters();
        inner.work.notify_one();
        inner.timer.notify_one();
        if tokio::time::timeout(grace, inner.until_idle())
            .await
            .is_err()
        {
            inner.kill_running_for_stop();
            inner.until_idle().await;
        }
        inner.phase.store(Phase::Stopped as u8, Ordering::SeqCst);
        inner.work.notify_one();
        inner.timer.notify_one();
        inner.backend.flush().await
    }
}

/// One task of a batch ([`Pool::try_submit_many`]) as stored.
#[derive(Clone, Debug)]
pub struct Submitted {
    /// The task.
    pub handle: TaskHandle,
    /// `true` when this call created it, `false` when its idempotency key
    /// named a task stored before (or earlier in the same batch).
    pub created: bool,
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
    pub async fn cancel(&self) -> Result<CancelResult> {
        self.pool.cancel(self.id).await
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

    fn lock_running(&self) -> MutexGuard<'_, IdMap<Running>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn emit(&self, id: TaskId, kind: EventKind) {
        self.emit_at(id, now_millis(), kind);
    }

    /// [`Inner::emit`] for a transition whose time the record holds
    /// already (a run's start or end): the event says the same time, and
    /// the clock is not read again.
    fn emit_at(&self, id: TaskId, at: Millis, kind: EventKind) {
        // One line per transition at info (progress at debug): what an
        // operator reads to follow a task.
        match &kind {
            EventKind::Progress { done, total } => {
                tracing::debug!(task = %id, done, total, "task progress");
            }
            EventKind::Started { attempt } => tracing::info!(task = %id, attempt, "task started"),
            EventKind::Retrying {
                attempt,
                outcome,
                run_at,
            } => tracing::info!(
                task = %id,
                attempt,
                outcome = outcome.kind(),
                reason = %outcome,
                run_at,
                "task failed; it will be retried"
            ),
            EventKind::Failed { outcome } => tracing::info!(
                task = %id,
                outcome = outcome.kind(),
                reason = %outcome,
                "task failed"
            ),
            EventKind::Interrupted { interruptions } => tracing::info!(
                task = %id,
                interruptions,
                "task interrupted (its host stopped while it ran); it runs again"
            ),
            EventKind::Submitted => tracing::info!(task = %id, "task submitted"),
            EventKind::Succeeded => tracing::info!(task = %id, "task succeeded"),
            EventKind::Cancelled => tracing::info!(task = %id, "task cancelled"),
            EventKind::Expired => tracing::info!(task = %id, "task expired before it ran"),
            EventKind::Requeued => tracing::info!(
                task = %id,
                "task put back in the queue by a graceful stop"
            ),
        }
        let event = Event { id, at, kind };
        // For the other hosts of a shared queue (a no-op otherwise).
        self.backend.publish(&event);
        self.send_event(event);
    }

    /// Sends `event` to the subscribers, if any ever subscribed (an event
    /// sent as the first subscribes may reach it or not, as it would
    /// have, sent a moment earlier or later).
    fn send_event(&self, event: Event) {
        if self.subscribed.load(Ordering::SeqCst) {
            // No subscriber left is not an error.
            let _ = self.events.send(event);
        }
    }

    /// `n` tasks entered the queue (a retry, a task put back).
    fn entered_queue(&self, n: usize) {
        self.waiting.fetch_add(n, Ordering::SeqCst);
    }

    /// `n` tasks left the queue (claimed, cancelled, expired): room for
    /// submitters.
    fn left_queue(&self, n: usize) {
        if n == 0 {
            return;
        }
        let _ = self
            .waiting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                Some(w.saturating_sub(n))
            });
        // A submitter counts itself before it looks for room: if it is
        // not counted yet, it will see the room made above.
        if self.room_waiters.load(Ordering::SeqCst) > 0 {
            self.room.notify_waiters();
        }
    }

    async fn cancel(&self, id: TaskId) -> Result<CancelResult> {
        match self.backend.cancel(&id).await? {
            Cancelled::Cancelled(record) => {
                self.left_queue(1);
                self.finished(&record);
                Ok(CancelResult::Cancelled)
            }
            Cancelled::Requested => {
                if let Some(running) = self.lock_running().get(&id) {
                    running.cancel.cancel();
                }
                Ok(CancelResult::Killed)
            }
            Cancelled::AlreadyFinished(state) => Ok(CancelResult::AlreadyFinished(state)),
            Cancelled::NotFound => Err(Error::NotFound(id)),
        }
    }

    /// The result of task `id` at once if it is final and its end was
    /// announced, where the backend lends its record without waiting
    /// ([`Backend::read_final_now`]: a store in memory) and the output is
    /// in it; `None`: wait as [`Inner::wait`] does. The usual wait of a
    /// caller that submitted many tasks first, answered with a copy of
    /// what the result holds, not of the whole record.
    fn final_result_now(&self, id: &TaskId) -> Option<Result<TaskResult>> {
        if self.backend.is_shared() {
            return None;
        }
        let mut result = None;
        match self
            .backend
            .read_final_now(id, &mut |record| result = record.result_copy())?
        {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => return Some(Err(e)),
        }
        // As in `Inner::wait`: a run that has not left `running` may not be
        // announced yet (its event not sent).
        if self.lock_running().contains_key(id) {
            return None;
        }
        result.map(Ok)
    }

    /// A final task's result, its output read from the backend when the
    /// record does not hold it.
    async fn result_of(&self, record: Arc<TaskRecord>) -> Result<TaskResult> {
        // The record is the store's own where the store keeps them in
        // memory: what the result holds is copied, not the whole record.
        let mut record = match Arc::try_unwrap(record) {
            Ok(own) => own,
            Err(shared) => match shared.result_copy() {
                Some(result) => return Ok(result),
                None => TaskRecord::clone(&shared),
            },
        };
        let output = match &mut record.output {
            crate::task::Payload::Inline(bytes) => std::mem::take(bytes),
            stored => {
                self.backend
                    .read_payload(&record.id, crate::task::Slot::Output, stored)
                    .await?
            }
        };
        record
            .take_result_with(output)
            .ok_or_else(|| Error::Host(format!("task {} is not final yet", record.id)))
    }

    /// Waits until the task is final; its record then.
    ///
    /// The record shared (`Arc`), and the waits that take long (a result
    /// stored but not yet delivered, a task that another host may run) in
    /// futures of their own: the usual wait, on a task that is final
    /// already or whose end this pool delivers, is a small future that
    /// moves no record by value. A caller that keeps a wait per task (a
    /// task spawned for each [`TaskHandle::wait`], or `join_all`) copies
    /// the whole future into place, and a record is some 400 bytes.
    async fn wait(&self, id: TaskId) -> Result<Arc<TaskRecord>> {
        // A task already final, whose end this pool has announced (its run
        // left `running`): its record, with no waiter registered and no
        // look at the queue. Most waits of a caller that submitted many
        // tasks first find their task so. Not on a shared backend, where
        // it would be a second query for every task not yet final.
        if !self.backend.is_shared()
            && let Some(record) = self.backend.get_final(&id).await?
            && !self.lock_running().contains_key(&id)
        {
            return Ok(Arc::from(record));
        }
        let (sender, receiver) = oneshot::channel();
        self.waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(id)
            .or_default()
            .push(sender);
        // Registered first, looked up second: a result stored in between is
        // not missed.
        if !self.backend.is_shared() && self.backend.known_unfinished(&id) {
            // Waiting or running here: its end comes to the waiter, with no
            // record read now.
            return receiver.await.map_err(|_| Error::ShutDown);
        }
        let record = match self.backend.get(&id).await {
            Ok(Some(record)) => Arc::new(record),
            Ok(None) => {
                self.forget_waiter(id);
                return Err(Error::NotFound(id));
            }
            Err(e) => {
                self.forget_waiter(id);
                return Err(e);
            }
        };
        if record.state.is_final() {
            return Box::pin(self.wait_for_delivery(id, record, receiver)).await;
        }
        if !self.backend.is_shared() {
            return receiver.await.map_err(|_| Error::ShutDown);
        }
        Box::pin(self.wait_polling(id, receiver)).await
    }

    /// [`Inner::wait`] for a task whose end is stored as `record` and may
    /// not be announced yet (its event not yet sent) by a run of this
    /// pool: the run leaves `running` only once it is, so this waits for
    /// that, or for the result the run then delivers to `receiver`.
    async fn wait_for_delivery(
        &self,
        id: TaskId,
        record: Arc<TaskRecord>,
        mut receiver: oneshot::Receiver<Arc<TaskRecord>>,
    ) -> Result<Arc<TaskRecord>> {
        while self.lock_running().contains_key(&id) {
            tokio::select! {
                delivered = &mut receiver => {
                    return delivered.map_err(|_| Error::ShutDown);
                }
                () = tokio::time::sleep(Duration::from_millis(1)) => {}
            }
        }
        self.forget_waiter(id);
        Ok(record)
    }

    /// [`Inner::wait`] on a shared backend, for a task not final yet:
    /// another host may run it, and this pool would not hear of its end,
    /// so it looks again every poll interval.
    async fn wait_polling(
        &self,
        id: TaskId,
        mut receiver: oneshot::Receiver<Arc<TaskRecord>>,
    ) -> Result<Arc<TaskRecord>> {
        let found = loop {
            tokio::select! {
                result = &mut receiver => break result.map_err(|_| Error::ShutDown),
                () = tokio::time::sleep(self.config.poll_interval) => {
                    match self.backend.get(&id).await {
                        Ok(Some(record)) => {
                            if record.state.is_final() {
                                break Ok(Arc::new(record));
                            }
                        }
                        Ok(None) => break Err(Error::NotFound(id)),
                        // The store comes back, or the caller's timeout
                        // ends the wait.
                        Err(e) if e.is_unavailable() => {}
                        Err(e) => break Err(e),
                    }
                }
            }
        };
        drop(receiver);
        self.forget_waiter(id);
        found
    }

    /// Whether anyone waits for `id` to end.
    fn has_waiters(&self, id: TaskId) -> bool {
        self.waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&id)
    }

    /// Gives the final `record` to those who wait for it.
    fn wake_waiters(&self, record: &TaskRecord) {
        if let Some(waiters) = self.take_waiters(&record.id) {
            send_result(waiters, Arc::new(record.clone()));
        }
    }

    /// Takes the waiters of `id` out of the map, to be given its result.
    fn take_waiters(&self, id: &TaskId) -> Option<Waiters> {
        self.waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id)
    }

    /// Gives the final `record` of a run that just ended to those who wait
    /// for it; `more`: its worker goes on to another task at once;
    /// `took`: how long the run took.
    ///
    /// Handing a result to a waiter on another thread wakes that thread
    /// (on a tokio runtime with I/O, an `eventfd` write), and the wake
    /// costs the worker more than a trivial task's whole run on a small
    /// virtual machine (about 7 µs here), and the waiter's thread as much
    /// again. So while a worker goes from one short run to the next,
    /// results for which somebody waits are held and handed over together,
    /// which a waiter woken once finds all there. What a result waits is
    /// bounded by time, not only by count: a batch of short runs costs one
    /// wake, and no result waits long for it. Handed over:
    /// - at the [`DELIVERY_BATCH`]th result held, or once the runs that
    ///   ended with the results held took a tenth of an epoch tick
    ///   together ([`DELIVERY_HOLD_TICKS`]; a run that long has its result
    ///   handed over at once);
    /// - when a run ends and its worker has no next task: its async task
    ///   ends there, so nothing would hand them over sooner, and a task
    ///   spawned to do it (which, with a durable store's claims ahead,
    ///   freed workers and one async task per run, came at every run and
    ///   found one result to hand over) would only cost its spawn;
    /// - otherwise at the first chance the workers' runtime gets to run
    ///   something else: a task spawned with the first result held, which
    ///   runs when the worker's loop yields (its cooperative budget, or a
    ///   run that waits or passes an epoch tick, all well within a few
    ///   ticks: a direct call ends by its second).
    ///
    /// The result of a long run, and any result while the worker has
    /// nothing else to do, goes at once. The event of each end is sent
    /// when the end is recorded, never held; a waiter that comes in
    /// meanwhile reads the stored result (`Inner::wait`).
    fn hand_over(self: &Arc<Self>, record: Arc<TaskRecord>, more: bool, took: Duration) {
        // Taken now, with the result: a waiter that comes after reads it
        // from the store.
        let Some(waiters) = self.take_waiters(&record.id) else {
            if !more {
                self.deliver_held();
            }
            return;
        };
        if !more || took >= self.delivery_hold {
            self.deliver_held();
            send_result(waiters, record);
            return;
        }
        let (held, runs) = {
            let mut held = self
                .deliveries
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            held.results.push((record, waiters));
            held.runs += took;
            (held.results.len(), held.runs)
        };
        if held >= DELIVERY_BATCH || runs >= self.delivery_hold {
            self.deliver_held();
        } else if held == 1 {
            let guard = BackgroundGuard::new(self);
            self.executor.handle().spawn(async move {
                guard.inner().deliver_held();
            });
        }
    }

    /// Hands over the results [`Inner::hand_over`] holds.
    fn deliver_held(&self) {
        let held = std::mem::take(
            &mut *self
                .deliveries
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for (record, waiters) in held.results {
            send_result(waiters, record);
        }
    }

    /// Drops the waiters of `id` whose receivers are gone.
    fn forget_waiter(&self, id: TaskId) {
        let mut waiters = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(list) = waiters.get_mut(&id) {
            list.retain(|w| !w.is_closed());
            if list.is_empty() {
                waiters.remove(&id);
            }
        }
    }

    /// After a task reached a final state, durably: its result to waiters,
    /// its event, the counters.
    fn finished(&self, record: &TaskRecord) {
        // The event and the counters first: a waiter that was given the
        // result finds its event already sent, and the task counted in
        // the stats.
        self.announce_finished(record);
        self.deliver_finished(record);
    }

    /// The first half of [`Inner::finished`]: the event and the counters.
    fn announce_finished(&self, record: &TaskRecord) {
        let at = record.finished_at.unwrap_or(record.updated_at);
        self.emit_at(record.id, at, EventKind::finished(record));
        self.finished.fetch_add(1, Ordering::Relaxed);
        self.recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .tick_at(at);
    }

    /// The second half of [`Inner::finished`]: the result to the waiters.
    fn deliver_finished(&self, record: &TaskRecord) {
        self.wake_waiters(record);
        self.quiet.notify_waiters();
    }

    fn kill_running_for_stop(&self) {
        for running in self.lock_running().values_mut() {
            running.for_stop = true;
            running.cancel.cancel();
        }
    }

    /// The last handle is gone: stop at once, putting running tasks back.
    fn halt(&self) {
        if self.phase() == Phase::Stopped {
            return;
        }
        self.phase.store(Phase::Stopping as u8, Ordering::SeqCst);
        self.kill_running_for_stop();
        self.phase.store(Phase::Stopped as u8, Ordering::SeqCst);
        self.room.notify_waiters();
        self.work.notify_one();
        self.timer.notify_one();
    }

    /// Until no task of this pool runs.
    async fn until_idle(&self) {
        loop {
            let notified = self.quiet.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.lock_running().is_empty() {
                return;
            }
            notified.await;
        }
    }

    /// Until nothing waits in the queue and nothing runs.
    async fn until_drained(&self) -> Result<()> {
        loop {
            let notified = self.quiet.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.lock_running().is_empty() {
                let counts = self.backend.counts().await?;
                let left = counts.get(TaskState::Queued)
                    + counts.get(TaskState::Scheduled)
                    + counts.get(TaskState::Running);
                if left == 0 {
                    return Ok(());
                }
            }
            // Woken by every end of a run; the timeout covers work that
            // another host finishes.
            let _ = tokio::time::timeout(self.config.poll_interval, notified).await;
        }
    }
}
