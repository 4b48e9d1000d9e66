//! The executor: an engine, its compiled modules, and a fixed set of
//! workers that turn (module, input, limits) into a [`RunReport`].

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::abi::environ::RunEnv;
use crate::abi::{RunContext, command, component};
use crate::cancel::CancelFlag;
use crate::engine::{EngineConfig, WasmEngine};
use crate::registry::{CompiledModule, Prepared, Registry};
use crate::{LimitOverrides, Limits, ModuleHash, ModuleSettings, Outcome, Result, RunReport};

/// A callback for the progress a task reports, as `(done, total)`.
pub type ProgressFn = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// One task for the executor's workers.
pub struct Job {
    /// The compiled module to run.
    pub module: CompiledModule,
    /// The input bytes.
    pub input: Vec<u8>,
    /// The limits to run under (see [`Executor::limits`]).
    pub limits: Limits,
    /// Called with each progress report of the task.
    pub on_progress: Option<ProgressFn>,
    /// Environment variables for the guest (none from the host).
    pub env: Vec<(String, String)>,
}

impl fmt::Debug for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job")
            .field("module", &self.module)
            .field("input_len", &self.input.len())
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

struct Queued {
    job: Job,
    cancel: SharedCancel,
    reply: oneshot::Sender<RunReport>,
}

/// A run's cancel flag, shared by whoever may cancel it (an
/// [`Execution`], the executor's queue entry and worker slot, the pool's
/// running set) and by the run's epoch callback.
pub(crate) type SharedCancel = Arc<CancelFlag>;

/// Runs WASM tasks on a fixed set of workers over one wasmtime engine.
///
/// Cloning is cheap and shares everything. When the last clone is dropped,
/// running tasks are killed (as by [`Execution::cancel`]), queued ones are
/// answered [`Outcome::Cancelled`] without running, and the workers stop.
pub struct Executor {
    inner: Arc<Inner>,
    /// Whether this handle is one of the users' (made by [`Executor::new`]
    /// or a clone) and counted in [`Inner::users`]; a worker's own handle,
    /// held while it runs a job, is not, so that it does not keep the
    /// executor's jobs alive once every user is gone.
    user: bool,
}

impl Clone for Executor {
    fn clone(&self) -> Self {
        self.inner.users.fetch_add(1, Ordering::Relaxed);
        Executor {
            inner: Arc::clone(&self.inner),
            user: true,
        }
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        if self.user && self.inner.users.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.inner.shut_down();
        }
    }
}

struct Inner {
    engine: WasmEngine,
    registry: Registry,
    config: EngineConfig,
    runtime: Option<tokio::runtime::Runtime>,
    /// Where scratch directories are made; `None` when none may be.
    scratch_root: Option<std::path::PathBuf>,
    queue: async_channel::Sender<Queued>,
    /// Set when the last user's handle is dropped.
    stopping: AtomicBool,
    /// The users' handles alive (see [`Executor::user`]).
    users: AtomicUsize,
    /// The cancel token of the job each worker runs now (or ran last), so
    /// that [`Inner::shut_down`] kills it. One uncontended lock per worker: a
    /// job's token is its own, not a child of one shutdown token, whose tree lock
    /// every job's creation and drop would take, from every thread.
    running: Box<[Mutex<Option<SharedCancel>>]>,
    /// Counted at every run: on cache lines of their own.
    counters: RunCounters,
}

/// The counters every run writes, aligned to a cache line pair of their
/// own: sharing a line with fields the callers read at every `spawn`
/// (the queue's sender) had each run's count take that line from the
/// caller's core.
#[derive(Default)]
#[repr(align(128))]
struct RunCounters {
    /// Runs made by a direct call, not on a fiber.
    direct_calls: AtomicU64,
    /// Direct calls that ran too long and started over on a fiber.
    direct_restarts: AtomicU64,
}

impl fmt::Debug for Executor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Executor")
            .field("config", &self.inner.config)
            .field("registry", &self.inner.registry)
            .finish_non_exhaustive()
    }
}

impl Executor {
    /// Builds the engine (sized for [`EngineConfig::slots`] workers), its
    /// epoch ticker, and starts `workers` workers on a dedicated runtime, so
    /// guests never compete with the caller's own async tasks.
    pub fn new(config: &EngineConfig) -> Result<Self> {
        let engine = WasmEngine::new(config)?;
        let artifacts = match &config.artifact_dir {
            Some(dir) => Some(crate::ArtifactCache::open(dir)?),
            None => None,
        };
        let registry = Registry::new(&engine.engine, artifacts)?;
        let scratch_root = (config.max_scratch > 0).then(|| config.scratch_root_dir());
        if let Some(root) = &scratch_root {
            let swept = crate::abi::scratch::sweep(root);
            if swept > 0 {
                tracing::info!(swept, "removed scratch directories of processes that died");
            }
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.slots())
            .thread_name("wpool-worker")
            // A direct call runs the guest on this thread's stack: room for
            // the wasm stack and the host frames, as a fiber has. Only
            // these threads make direct calls.
            .thread_stack_size(config.max_wasm_stack + (2 << 20))
            .on_thread_start(|| crate::abi::WORKER_THREAD.set(true))
            .enable_time()
            .build()
            .map_err(|e| crate::Error::Host(format!("cannot start the worker threads: {e}")))?;
        let (queue, receiver) = async_channel::unbounded::<Queued>();
        let inner = Arc::new(Inner {
            engine,
            registry,
            config: config.clone(),
            runtime: Some(runtime),
            scratch_root,
            queue,
            stopping: AtomicBool::new(false),
            users: AtomicUsize::new(1),
            running: (0..config.workers).map(|_| Mutex::new(None)).collect(),
            counters: RunCounters::default(),
        });
        let executor = Executor { inner, user: true };
        for worker in 0..config.workers {
            let receiver = receiver.clone();
            // Workers hold a weak reference: they must not keep the executor
            // alive once its users are gone.
            let weak = Arc::downgrade(&executor.inner);
            executor.handle().spawn(async move {
                while let Ok(Queued { job, cancel, reply }) = receiver.recv().await {
                    let Some(inner) = weak.upgrade() else { break };
                    let executor = Executor { inner, user: false };
                    let report = executor.run_queued(worker, job, &cancel).await;
                    // The caller may have dropped its handle: that is fine.
                    let _ = reply.send(report);
                }
            });
        }
        Ok(executor)
    }

    /// Runs a job taken from the queue by worker `worker`, where
    /// [`Inner::shut_down`] finds its token.
    async fn run_queued(&self, worker: usize, job: Job, cancel: &SharedCancel) -> RunReport {
        // The token stays in the slot after the run, until the worker's
        // next job replaces it (one lock a job, not two): cancelling an
        // ended run's token at shutdown does nothing.
        let slot = &self.inner.running[worker];
        {
            let mut running = slot.lock().unwrap_or_else(PoisonError::into_inner);
            *running = Some(Arc::clone(cancel));
            // Under the slot's lock, which `shut_down` takes after it sets
            // `stopping`: either it finds the token, or this sees the flag.
            if self.inner.stopping.load(Ordering::Acquire) {
                cancel.cancel();
            }
        }
        let env: Vec<(&str, &str)> = job
            .env
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_str()))
            .collect();
        self.run_shared(
            &job.module,
            job.input,
            &job.limits,
            cancel,
            job.on_progress,
            RunEnv::Pairs(&env),
        )
        .await
    }

    /// The handle of the runtime the workers run on.
    pub fn handle(&self) -> &tokio::runtime::Handle {
        self.inner
            .runtime
            .as_ref()
            .expect("the runtime lives as long as the executor")
            .handle()
    }

    /// The configuration the executor was built with.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// Validates and compiles `bytes` (once: a module registered before is
    /// returned from the cache), checking that it is a WASI command or a
    /// component of the `wpool:task` world whose imports the host provides.
    pub fn register(&self, bytes: &[u8]) -> Result<CompiledModule> {
        self.inner.registry.register(bytes)
    }

    /// Like [`Executor::register`], for bytes the caller keeps under
    /// `hash` (as a pool keeps modules in its store by hash): `bytes` are
    /// hashed only if they are to be compiled, not when the module is
    /// registered already or its artifact is in the on-disk cache
    /// ([`EngineConfig::artifact_dir`]), whose artifact of `hash` is then
    /// loaded as it is. Bytes that are to be compiled and do not hash to
    /// `hash` are refused ([`Error::InvalidModule`](crate::Error::InvalidModule)).
    pub fn register_known(&self, hash: &ModuleHash, bytes: &[u8]) -> Result<CompiledModule> {
        self.inner.registry.register_known(*hash, bytes)
    }

    /// Like [`Executor::register`], and sets the module's run settings
    /// (arguments, environment, success codes, scratch directory; see
    /// [`ModuleSettings`]), which every later run of the module uses.
    /// Registering again with other settings replaces them; default
    /// settings remove them. [`Executor::register`] leaves them as they are.
    ///
    /// Refused: malformed settings, a scratch directory larger than
    /// [`EngineConfig::max_scratch`], and a scratch directory for a module
    /// that is not a WASI preview 1 command.
    pub fn register_with(&self, bytes: &[u8], settings: ModuleSettings) -> Result<CompiledModule> {
        settings.validate()?;
        let module = self.register(bytes)?;
        self.set_module_settings(&module, settings)?;
        Ok(module)
    }

    /// Sets the run settings of a registered module (see
    /// [`Executor::register_with`]).
    pub fn set_module_settings(
        &self,
        module: &CompiledModule,
        settings: ModuleSettings,
    ) -> Result<()> {
        settings.validate()?;
        if let Some(bytes) = settings.scratch {
            let max = self.inner.config.max_scratch;
            if bytes > max {
                return Err(crate::Error::InvalidSettings(format!(
                    "a scratch directory of {} is more than this pool allows ({}; the operator \
                     sets `max_scratch`)",
                    crate::units::format_size(bytes),
                    crate::units::format_size(max)
                )));
            }
            if !matches!(module.prepared(), Prepared::Command(_)) {
                return Err(crate::Error::InvalidSettings(
                    "a scratch directory is given only to WASI preview 1 commands \
                     (`wasm32-wasip1`), whose file writes wpool can bound; this module is a \
                     component"
                        .into(),
                ));
            }
        }
        self.inner.registry.set_settings(&module.hash(), settings);
        Ok(())
    }

    /// A module's run settings (the default if none were set).
    pub fn module_settings(&self, hash: &ModuleHash) -> ModuleSettings {
        ModuleSettings::clone(&self.inner.registry.settings(hash))
    }

    /// A registered module, by hash.
    pub fn module(&self, hash: &ModuleHash) -> Option<CompiledModule> {
        self.inner.registry.get(hash)
    }

    /// Drops a module from the in-memory cache (runs already holding it
    /// finish; the next registration compiles or loads it again).
    pub fn forget_module(&self, hash: &ModuleHash) {
        self.inner.registry.forget(hash);
    }

    /// How many modules have been compiled since the executor started.
    pub fn compilations(&self) -> u64 {
        self.inner.registry.compilations()
    }

    /// How many runs were made by a direct call of the guest rather than on
    /// a fiber: runs of command modules that cannot wait in a host call and
    /// whose recent runs were short (see the README's *How a task runs*).
    pub fn direct_calls(&self) -> u64 {
        self.inner.counters.direct_calls.load(Ordering::Relaxed)
    }

    /// How many of the [direct calls](Executor::direct_calls) ran past two
    /// epoch ticks, and were ended and started over on a fiber (their
    /// work is lost, and at most two ticks of it).
    pub fn direct_call_restarts(&self) -> u64 {
        self.inner.counters.direct_restarts.load(Ordering::Relaxed)
    }

    /// How many modules were loaded from the on-disk artifact cache
    /// ([`EngineConfig::artifact_dir`]) instead of compiled.
    pub fn cache_loads(&self) -> u64 {
        self.inner.registry.cache_loads()
    }

    /// The counters of the on-disk artifact cache
    /// ([`EngineConfig::artifact_dir`]), including the time spent checking
    /// and loading artifacts; `None` without one.
    pub fn artifact_stats(&self) -> Option<crate::CacheStats> {
        self.inner.registry.artifact_stats()
    }

    /// The pool's default limits with `overrides` applied, checked.
    pub fn limits(&self, overrides: &LimitOverrides) -> Result<Limits> {
        let config = &self.inner.config;
        if overrides.fuel.is_some() && !config.fuel_metering {
            return Err(crate::Error::InvalidLimit {
                name: "fuel",
                reason: "this pool does not meter fuel; enable fuel metering in its configuration"
                    .into(),
            });
        }
        config
            .default_limits
            .with_overrides(overrides, config.max_memory)
    }

    /// Queues `job` for the next free worker (first in, first out) and
    /// returns a handle to its result.
    pub fn spawn(&self, job: Job) -> Execution {
        let cancel = Arc::new(CancelFlag::new());
        let (reply, receiver) = oneshot::channel();
        let queued = Queued {
            job,
            cancel: Arc::clone(&cancel),
            reply,
        };
        // The channel is unbounded and open while `self` is alive.
        let _ = self.inner.queue.try_send(queued);
        Execution { cancel, receiver }
    }

    /// Runs one task on the calling async task, under `limits`, until it
    /// ends, its timeout passes or `cancel` fires. Must be called on the
    /// executor's runtime ([`Executor::handle`]). The guest's environment
    /// is `env` plus the module's own variables (see [`ModuleSettings`]),
    /// never the host's. Polled on one of the executor's own threads, a
    /// short run may be a [direct call](Executor::direct_calls); polled
    /// elsewhere (`handle().block_on`), it runs on a fiber.
    pub async fn run(
        &self,
        module: &CompiledModule,
        input: Vec<u8>,
        limits: &Limits,
        cancel: &CancellationToken,
        on_progress: Option<ProgressFn>,
        env: &[(&str, &str)],
    ) -> RunReport {
        let cancel = Arc::new(CancelFlag::linked(cancel.clone()));
        self.run_shared(
            module,
            input,
            limits,
            &cancel,
            on_progress,
            RunEnv::Pairs(env),
        )
        .await
    }

    /// [`Executor::run`] with the token shared already, as the executor's
    /// queue and the pool hold it.
    pub(crate) async fn run_shared(
        &self,
        module: &CompiledModule,
        input: Vec<u8>,
        limits: &Limits,
        cancel: &SharedCancel,
        on_progress: Option<ProgressFn>,
        env: RunEnv<'_>,
    ) -> RunReport {
        if cancel.is_cancelled() {
            return RunReport::without_run(Outcome::Cancelled);
        }
        let config = &self.inner.config;
        let registry = &self.inner.registry;
        let own = registry.own_settings(&module.hash());
        let settings = own
            .as_deref()
            .unwrap_or_else(|| registry.default_settings());
        let read_only_dirs: Vec<(std::path::PathBuf, String)> = config
            .read_only_dirs
            .iter()
            .filter(|dir| dir.applies_to(&module.hash(), settings))
            .map(|dir| (dir.host.clone(), dir.guest.clone()))
            .collect();
        let cx = RunContext {
            limits,
            cancel,
            on_progress,
            fuel_metering: self.inner.engine.fuel_metering,
            env,
            settings,
            own_settings: own.as_ref(),
            read_only_dirs: &read_only_dirs,
            scratch_root: self.inner.scratch_root.as_deref(),
            epoch_tick: config.epoch_tick,
            direct_calls: &self.inner.counters.direct_calls,
            direct_restarts: &self.inner.counters.direct_restarts,
        };
        let engine = &self.inner.engine.engine;
        let mut report = match module.prepared() {
            Prepared::Command(pre) => command::run(engine, pre, input, &cx).await,
            Prepared::Component(pre) => component::run(engine, pre, input, &cx).await,
            Prepared::CliCommand(pre) => component::run_cli(engine, pre, input, &cx).await,
        };
        if report.outcome == Outcome::OutputTooLarge {
            keep_tail(&mut report);
        }
        tracing::debug!(
            module = %module.hash(),
            outcome = report.outcome.kind(),
            duration_us = report.duration.as_micros() as u64,
            fuel = report.fuel_consumed,
            "task run finished"
        );
        report
    }
}

/// An `output_too_large` failure keeps only the last
/// [`TOO_LARGE_TAIL`](crate::task::TOO_LARGE_TAIL) bytes of what the task
/// wrote, enough to see what it was doing: a failure never stores the
/// whole `max_output`.
fn keep_tail(report: &mut RunReport) {
    let written = report.output.len();
    let tail = crate::task::TOO_LARGE_TAIL;
    if written > tail {
        report.output.drain(..written - tail);
        report.output.shrink_to_fit();
        report.log.push_str(&format!(
            "\nwpool: the output passed its limit; kept its last {tail} of {written} bytes\n"
        ));
    }
}

impl Inner {
    /// What dropping the last user's handle does: no job is queued from
    /// now on, those queued end cancelled without running, and those
    /// running are killed.
    fn shut_down(&self) {
        self.queue.close();
        self.stopping.store(true, Ordering::Release);
        for slot in &self.running {
            if let Some(cancel) = &*slot.lock().unwrap_or_else(PoisonError::into_inner) {
                cancel.cancel();
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shut_down();
        if let Some(runtime) = self.runtime.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                // Cannot block inside an async context; the cancel above
                // already ends every guest at its next epoch tick.
                runtime.shutdown_background();
            } else {
                runtime.shutdown_timeout(std::time::Duration::from_secs(5));
            }
        }
    }
}

/// A task queued or running on an [`Executor`].
///
/// Dropping it does not cancel the task.
#[derive(Debug)]
pub struct Execution {
    cancel: SharedCancel,
    receiver: oneshot::Receiver<RunReport>,
}

impl Execution {
    /// Cancels the task: if it has not started it never runs; if it runs it
    /// is killed, whether it spins in wasm or waits in a host call. Its
    /// outcome is then [`Outcome::Cancelled`].
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// A token that cancels this task when cancelled, and is cancelled
    /// when the task is (by [`Execution::cancel`] or the executor's
    /// shutdown). Made on the first call; later calls return clones.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.token()
    }

    /// Waits for the task's report.
    pub async fn wait(self) -> RunReport {
        self.receiver.await.unwrap_or_else(|_| {
            RunReport::without_run(Outcome::HostError("the executor shut down".into()))
        })
    }

    /// Waits for the task's report, blocking the thread. Must not be called
    /// from async code (use [`Execution::wait`]).
    ///
    /// It looks for the report for up to 20 µs before it parks the thread,
    /// yielding the core meanwhile, as the standard library's channels spin
    /// before they block: a short task's report then needs no wake-up.
    /// Waking a parked thread costs the worker a `futex` call and the
    /// waiter a context switch; measured here, with one worker running
    /// trivial tasks for a caller that waits for each in turn, that was a
    /// third of the process's CPU time.
    pub fn wait_blocking(mut self) -> RunReport {
        let started = Instant::now();
        let report = loop {
            match self.receiver.try_recv() {
                Ok(report) => break Ok(report),
                Err(oneshot::error::TryRecvError::Closed) => break Err(()),
                Err(oneshot::error::TryRecvError::Empty)
                    if started.elapsed() < SPIN_BEFORE_PARKING =>
                {
                    std::thread::yield_now();
                }
                Err(oneshot::error::TryRecvError::Empty) => {
                    break self.receiver.blocking_recv().map_err(drop);
                }
            }
        };
        report.unwrap_or_else(|()| {
            RunReport::without_run(Outcome::HostError("the executor shut down".into()))
        })
    }
}

/// How long [`Execution::wait_blocking`] looks for a report before it
/// parks the thread: a few times what a trivial task takes to run.
const SPIN_BEFORE_PARKING: Duration = Duration::from_micros(20);
