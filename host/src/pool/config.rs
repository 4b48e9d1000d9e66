//! How a pool is set up.

use std::time::Duration;

use crate::{EngineConfig, Error, Result};

/// The default of [`PoolConfig::max_stored_output`]: 8 GiB.
pub const DEFAULT_MAX_STORED_OUTPUT: u64 = 8 << 30;

/// The most [`PoolConfig::claim_ahead`] allows.
pub const MAX_CLAIM_AHEAD: usize = 1024;

/// The default of [`PoolConfig::claim_ahead`] on a durable embedded store
/// (sled): 512. The pool claims ahead only what its workers finish in
/// about 50 ms, so this bounds short tasks alone. A claim waits for a
/// flush, and on 2 busy cores the flushing thread waits its turn for a
/// core too: about 0.6 ms a flush under load, in which two workers run
/// some 250 trivial tasks. With fewer claimed ahead they ran out before
/// the next claim came, and each waited for a flush of its own. A task
/// claimed ahead is held in memory with its input (at most 64 KiB inline;
/// larger inputs stay in the store's files), so 512 hold at most 32 MiB.
pub const DEFAULT_CLAIM_AHEAD: usize = 512;

/// How a [`Pool`](crate::Pool) is set up.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    pub(crate) engine: EngineConfig,
    pub(crate) max_queued: usize,
    pub(crate) retention: Duration,
    pub(crate) max_results: Option<u64>,
    pub(crate) stop_grace: Duration,
    pub(crate) gc_modules: bool,
    pub(crate) lease_ttl: Duration,
    pub(crate) poll_interval: Duration,
    pub(crate) max_stored_output: u64,
    pub(crate) claim_ahead: Option<usize>,
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
            lease_ttl: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            max_stored_output: DEFAULT_MAX_STORED_OUTPUT,
            claim_ahead: None,
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
    /// [`Pool::submit`](crate::Pool::submit) waits for room and
    /// [`Pool::try_submit`](crate::Pool::try_submit) fails with
    /// [`Error::QueueFull`]. On a queue shared with other hosts, the count
    /// is the shared queue's, read again from the backend whenever this
    /// pool's own count says the queue is full. Default: 1,000,000.
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

    /// The most bytes of task outputs kept in the store's output files
    /// (outputs larger than [`INLINE_PAYLOAD`](crate::task::INLINE_PAYLOAD);
    /// the sled store keeps them beside the database). While the files
    /// hold this much, submissions are refused with
    /// [`Error::StorageFull`] (HTTP 503 `storage_full`) until retention
    /// removes old results; tasks already queued still run and keep their
    /// outputs, so the files can pass the bound by at most what the tasks
    /// queued then produce. Default: 8 GiB.
    pub fn max_stored_output(&mut self, bytes: u64) -> &mut Self {
        self.max_stored_output = bytes;
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

    /// How long [`Pool::stop`](crate::Pool::stop) lets running tasks finish before killing
    /// them (they are queued again). Default: 30 s.
    pub fn stop_grace(&mut self, grace: Duration) -> &mut Self {
        self.stop_grace = grace;
        self
    }

    /// How long a claimed task's lease lasts without a heartbeat. The pool
    /// renews the leases of its running tasks every third of it; a lease
    /// not renewed in time is lost, and its task runs again (an
    /// interruption). With the embedded backends the process's end is what
    /// loses leases in practice; with a shared one, this is how long a dead
    /// host's tasks wait before another host takes them. Default: 30 s.
    pub fn lease_ttl(&mut self, ttl: Duration) -> &mut Self {
        self.lease_ttl = ttl;
        self
    }

    /// How often an idle pool asks its backend for work it was not told
    /// of (work submitted by another host, a notification lost). Default:
    /// 1 s.
    pub fn poll_interval(&mut self, interval: Duration) -> &mut Self {
        self.poll_interval = interval;
        self
    }

    /// How many tasks the pool may claim ahead of its free workers, at
    /// most, so that short tasks do not each wait for a durable claim of
    /// their own. Default: [`DEFAULT_CLAIM_AHEAD`] (512) on a durable
    /// embedded store (sled), 0 on the others (a task is claimed only when
    /// a worker is free for it). On the memory store nothing waits for a
    /// flush, so there is nothing to gain; on PostgreSQL a host claiming
    /// ahead would hold tasks that another host's free worker could run.
    ///
    /// Every claim for a free worker is durable before its task runs, with
    /// the run's attempt, so that a task that takes its host down counts
    /// that interruption. With 0, a worker waits for that write (one
    /// flush) before each task, which bounds a durable store's throughput
    /// to about one task per flush per worker, whatever the tasks cost.
    /// With claiming ahead, one flush carries the claims of many tasks,
    /// held under lease (and renewed) until a worker takes them. A worker
    /// whose run ends while such tasks wait goes on to the next at once,
    /// and its end is shown (result, event, counters) once a flush that
    /// began after it was written has ended, a flush the pool awaits once
    /// for the ends of all runs meanwhile
    /// ([`Backend::complete_unflushed`](crate::backend::Backend::complete_unflushed)).
    ///
    /// The pool claims ahead only as much as its workers finish in the
    /// 50 ms after their current runs, judged by the recent runs' mean
    /// duration `m`: `(50 ms − m) × workers / m` tasks, up to this bound.
    /// Short tasks are claimed in groups; tasks whose mean is above
    /// `50 ms × workers / (workers + 1)` (25 ms with one worker, 33 ms with
    /// two) one per free worker, as with 0. So a task claimed ahead waits
    /// about 50 ms at most for a worker. Tasks claimed ahead are handed to
    /// workers in the order claimed: a task of higher priority submitted
    /// meanwhile waits for those.
    ///
    /// A task claimed ahead shows `running` from its claim, with no
    /// attempt stored until its run ends ([`TaskRecord::claim_ahead`]):
    /// its start is not written, which is the point. When the host dies,
    /// such a claim counts an interruption but never ends the task, since
    /// its run may not have started; a task whose interruptions reached
    /// [`TaskSpec::max_interruptions`] is claimed only for a free worker,
    /// so a task that keeps taking its host down still ends
    /// [`Outcome::Interrupted`](crate::Outcome::Interrupted), after at
    /// most one crash more than its most. A pool that stops or pauses
    /// puts the tasks it claimed ahead back in the queue, with nothing
    /// counted.
    ///
    /// [`TaskRecord::claim_ahead`]: crate::TaskRecord::claim_ahead
    /// [`TaskSpec::max_interruptions`]: crate::TaskSpec::max_interruptions
    pub fn claim_ahead(&mut self, tasks: usize) -> &mut Self {
        self.claim_ahead = Some(tasks);
        self
    }

    /// [`PoolConfig::claim_ahead`] as set, or its default for `backend`.
    pub(crate) fn claim_ahead_for(&self, backend: &dyn crate::backend::Backend) -> usize {
        self.claim_ahead
            .unwrap_or(if backend.is_durable() && backend.completes_with_claim() {
                DEFAULT_CLAIM_AHEAD
            } else {
                0
            })
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if let Some(ahead) = self.claim_ahead
            && ahead > MAX_CLAIM_AHEAD
        {
            return Err(Error::Config(format!(
                "`claim_ahead` must be at most {MAX_CLAIM_AHEAD} (it is {ahead})"
            )));
        }
        if self.max_queued == 0 {
            return Err(Error::Config("`max_queued` must be at least 1".into()));
        }
        if self.lease_ttl < Duration::from_millis(30) {
            return Err(Error::Config(format!(
                "`lease_ttl` must be at least 30 ms (it is {:?}): heartbeats renew it every \
                 third of it",
                self.lease_ttl
            )));
        }
        if self.poll_interval.is_zero() {
            return Err(Error::Config("`poll_interval` must be above zero".into()));
        }
        Ok(())
    }
}
