//! The pool's background work: the dispatcher that claims tasks for free
//! workers, the runs, the heartbeat that keeps leases, the timer that
//! brings delayed tasks to the queue, and retention.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::events::EventKind;
use super::outage::Outage;
use super::{Ahead, BackgroundGuard, Inner, Phase, Running};
use crate::abi::environ::RunEnv;
use crate::backend::{Claim, Completed, CompletedNow, LeaseState};
use crate::cancel::CancelFlag;
use crate::executor::SharedCancel;
use crate::task::{Attempt, Completion, Lease, Payload, Slot, TaskRecord, TaskState, now_millis};
use crate::{Error, Outcome, Result, RunReport};

/// How many times recording a run's end is tried, when the store fails
/// otherwise than by being out of reach, before the pool gives up on it
/// (the task then runs again once its lease expires). While the store is
/// out of reach ([`Error::Unavailable`]) the pool tries until it is back.
const COMPLETE_TRIES: u32 = 8;

/// Starts the dispatcher, timer, heartbeat and retention of a new pool;
/// with `count_waiting`, the dispatcher first asks the backend how many
/// tasks wait (for backpressure).
pub(super) fn start(inner: &Arc<Inner>, count_waiting: bool) {
    let handle = inner.executor.handle().clone();
    handle.spawn(dispatcher(BackgroundGuard::new(inner), count_waiting));
    handle.spawn(timer(BackgroundGuard::new(inner)));
    handle.spawn(heartbeat(Arc::downgrade(inner)));
    handle.spawn(sweeper(Arc::downgrade(inner)));
}

/// Claims as many tasks as there are free workers, whenever there may be
/// work: at a submission, at the end of a run, when the timer brings
/// delayed tasks, and every poll interval.
async fn dispatcher(guard: BackgroundGuard, count_waiting: bool) {
    let inner = guard.inner();
    let ttl = inner.config.lease_ttl;
    if count_waiting {
        // Before any claim, so that no task leaves the count before it is
        // in it. Submissions made meanwhile may be counted twice: the
        // count is for backpressure, and errs on the side of less room.
        match inner.backend.counts().await {
            Ok(counts) => {
                let waiting = counts.get(TaskState::Queued) + counts.get(TaskState::Scheduled);
                inner.entered_queue(usize::try_from(waiting).unwrap_or(usize::MAX));
            }
            Err(e) => tracing::warn!(error = %e, "cannot count the waiting tasks"),
        }
    }
    let mut outage = Outage::default();
    loop {
        let notified = inner.work.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let phase = inner.phase();
        if phase >= Phase::Stopping {
            break;
        }
        // While the store is out of reach, word of new work (which other
        // hosts cannot send then anyway) does not cut the pause short.
        let mut hear_of_work = true;
        let mut pause = inner.config.poll_interval;
        if inner.paused.load(Ordering::SeqCst) {
            inner.release_ahead().await;
        } else {
            inner.start_ahead();
            let free = inner
                .active_workers
                .load(Ordering::Relaxed)
                .saturating_sub(inner.executing.load(Ordering::Relaxed));
            let want = (free + inner.ahead_depth()).saturating_sub(inner.ahead_len());
            if want > 0 {
                // Those beyond the free workers are claimed ahead: no
                // attempt is stored for them until they run.
                let for_free = free.min(want);
                match inner
                    .backend
                    .claim_ahead(for_free, want - for_free, ttl)
                    .await
                {
                    Ok(claim) => {
                        outage.ended("claiming tasks");
                        inner.left_queue(claim.claimed.len() + claim.expired.len());
                        for record in &claim.expired {
                            inner.finished(record);
                        }
                        let full = claim.claimed.len() == want;
                        for (record, lease) in claim.claimed {
                            inner.hand_out(record, lease);
                        }
                        if full {
                            continue; // there may be more
                        }
                    }
                    Err(e) if e.is_unavailable() => {
                        pause = outage.failed("claiming tasks", &e);
                        hear_of_work = false;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot claim tasks; trying again in 1 s");
                        pause = Duration::from_secs(1);
                    }
                }
                if phase == Phase::Closing {
                    inner.quiet.notify_waiters();
                }
            }
        }
        tokio::select! {
            () = notified => {}
            () = inner.backend.wait_for_work(), if hear_of_work => {}
            () = tokio::time::sleep(pause) => {}
        }
    }
    inner.release_ahead().await;
    inner.quiet.notify_waiters();
}

/// What a worker's chain of runs ([`Inner::run`]) keeps from one run to
/// the next, so that a run writes fewer of the cache lines that the other
/// workers' runs write too.
struct Chain {
    /// The module of the last run: the next task of the same module runs
    /// it without the registry's lock and reference count, which every
    /// worker would otherwise write at every run. The registry may drop a
    /// module meanwhile (it is no longer stored); a task naming it by its
    /// hash still names these very bytes, and the module's settings are
    /// read at each run.
    module: Option<crate::registry::CompiledModule>,
    /// This chain's mean run time, in µs (an exponential average), and
    /// the mean last published to [`Inner::mean_run_us`].
    mean_us: u64,
    published_us: u64,
    /// Where this chain's runs report progress, and the callback that
    /// reports there ([`ProgressTarget`]).
    progress: Arc<ProgressTarget>,
    on_progress: crate::ProgressFn,
    /// The claim a run's end fills ([`Backend::complete_and_claim_now`]),
    /// emptied after each: its room serves every run of the chain.
    claim: Claim,
}

/// What [`Inner::record_run_now`] did with a run's end.
enum RecordedNow {
    /// Recorded (the task as recorded), or not recorded for good (`None`:
    /// the lease was lost, or the write failed once it had used the end).
    Done(Option<Arc<TaskRecord>>),
    /// Not made at once: the end given back, for [`Inner::record_run`].
    Later(Completion),
}

/// Where the runs of a chain report their progress: the task that runs
/// now. One callback serves all the runs of a chain, rather than one made
/// for each run, which cost an allocation and a weak reference to the
/// pool taken and let go, on a line every worker writes.
struct ProgressTarget {
    pool: std::sync::Weak<Inner>,
    /// Set before each run; read only by that run's reports.
    task: parking_lot::Mutex<crate::TaskId>,
}

impl ProgressTarget {
    /// A report of the task that runs now.
    fn report(&self, done: u64, total: u64) {
        let Some(pool) = self.pool.upgrade() else {
            return;
        };
        let id = *self.task.lock();
        if let Some(running) = pool.lock_running().get_mut(&id) {
            running.progress = Some((done, total));
        }
        pool.send_event(super::Event {
            id,
            at: now_millis(),
            kind: EventKind::Progress { done, total },
        });
    }
}

/// How far ahead of its runs a pool claims: about what its workers finish
/// in this time ([`crate::PoolConfig::claim_ahead`]); so also about the
/// longest a task claimed ahead waits for a worker.
const AHEAD_HORIZON_US: u64 = 50_000;

impl Inner {
    fn lock_ahead(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<Ahead>> {
        self.ahead
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many tasks wait claimed ahead, read without their lock.
    fn ahead_len(&self) -> usize {
        self.ahead_len.load(Ordering::Acquire)
    }

    /// Changes the tasks claimed ahead with `change`, under their lock,
    /// and keeps their count.
    fn change_ahead<T>(
        &self,
        change: impl FnOnce(&mut std::collections::VecDeque<Ahead>) -> T,
    ) -> T {
        let mut ahead = self.lock_ahead();
        let answer = change(&mut ahead);
        self.ahead_len.store(ahead.len(), Ordering::Release);
        answer
    }

    /// How many tasks to hold claimed ahead now: what the workers finish
    /// in [`AHEAD_HORIZON_US`] at the recent runs' mean, up to
    /// `claim_ahead`, beyond the current runs (so none once the mean
    /// reaches `horizon × workers / (workers + 1)`); none before a run was
    /// timed.
    fn ahead_depth(&self) -> usize {
        let max = self.claim_ahead;
        let mean = self.mean_run_us.load(Ordering::Relaxed);
        if max == 0 || mean == 0 {
            return 0;
        }
        let workers = u64::try_from(self.active_workers.load(Ordering::Relaxed)).unwrap_or(1);
        let depth = AHEAD_HORIZON_US
            .saturating_sub(mean)
            .saturating_mul(workers)
            / mean;
        usize::try_from(depth).unwrap_or(usize::MAX).min(max)
    }

    /// Counts a run of `us` in `chain`'s mean, and publishes that mean for
    /// [`Inner::ahead_depth`] when it moved by more than a sixteenth since
    /// it last did (not at every run: every worker's run would write the
    /// one line all of them read).
    fn timed(&self, chain: &mut Chain, us: u64) {
        chain.mean_us = if chain.mean_us == 0 {
            us
        } else {
            (chain.mean_us * 7 + us) / 8
        };
        let moved = chain.mean_us.abs_diff(chain.published_us);
        if chain.published_us == 0 || moved > chain.published_us / 16 {
            chain.published_us = chain.mean_us;
            self.mean_run_us.store(chain.mean_us, Ordering::Relaxed);
        }
    }

    /// Takes a worker for a run, if one is free.
    fn take_worker(&self) -> bool {
        let workers = self.active_workers.load(Ordering::Relaxed);
        self.executing
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < workers).then_some(n + 1)
            })
            .is_ok()
    }

    /// A task just claimed: in `running` from now on, with its cancel
    /// token.
    fn claimed(&self, record: Arc<TaskRecord>, lease: Lease) -> Ahead {
        let cancel = SharedCancel::new(CancelFlag::new());
        // A cancel asked for before the claim: kill at once.
        if record.cancel_requested {
            cancel.cancel();
        }
        self.lock_running().insert(
            record.id,
            Running {
                lease,
                cancel: Arc::clone(&cancel),
                for_stop: false,
                progress: None,
            },
        );
        // A cancel asked for after the claim, before the run was in
        // `running`, found nothing to kill (`Inner::cancel` looks there
        // after marking the task in the backend): the backend tells. One
        // of the two sees the other, so the run is killed at once either
        // way, not at the next heartbeat.
        if !cancel.is_cancelled() && self.backend.cancel_requested(&record.id) {
            cancel.cancel();
        }
        Ahead {
            record,
            lease,
            cancel,
        }
    }

    /// Whether new runs may start: the pool is neither paused nor
    /// stopping.
    fn may_start(&self) -> bool {
        !self.paused.load(Ordering::SeqCst) && self.phase() < Phase::Stopping
    }

    /// A task just claimed: run it if a worker is free, else hold it
    /// ahead.
    fn hand_out(self: &Arc<Self>, record: Arc<TaskRecord>, lease: Lease) {
        let task = self.claimed(record, lease);
        if self.take_worker() {
            self.start_run(task);
        } else {
            self.change_ahead(|ahead| ahead.push_back(task));
        }
    }

    /// Hands tasks claimed ahead to free workers, in the order claimed.
    fn start_ahead(self: &Arc<Self>) {
        loop {
            if self.paused.load(Ordering::SeqCst) || self.phase() >= Phase::Stopping {
                return;
            }
            if self.ahead_len() == 0 || !self.take_worker() {
                return;
            }
            let Some(task) = self.change_ahead(std::collections::VecDeque::pop_front) else {
                // Taken by another run's end meanwhile.
                self.executing.fetch_sub(1, Ordering::Relaxed);
                return;
            };
            self.start_run(task);
        }
    }

    /// Puts the tasks claimed ahead back in the queue (a stop or a pause):
    /// they never started, so no attempt or interruption is counted, and no
    /// event is sent (none said they started).
    async fn release_ahead(&self) {
        let ahead: Vec<Ahead> = self.change_ahead(|ahead| ahead.drain(..).collect());
        if ahead.is_empty() {
            return;
        }
        for task in ahead {
            self.put_back_unstarted(&task.lease).await;
            self.lock_running().remove(&task.record.id);
        }
        self.quiet.notify_waiters();
    }

    /// Puts back in the queue a task claimed under `lease` that never
    /// started: no attempt or interruption is counted.
    async fn put_back_unstarted(&self, lease: &Lease) {
        match self.backend.release(lease).await {
            Ok(true) => self.entered_queue(1),
            Ok(false) => {}
            Err(e) => {
                // The lease runs out instead, and the task runs again.
                tracing::error!(task = %lease.task, error = %e, "cannot put a claimed task back in the queue");
            }
        }
    }

    /// A run of `record` starts now: opens its attempt if its claim did
    /// not (a claim ahead, [`TaskRecord::begin`]), and announces it.
    fn begin(&self, record: &mut Arc<TaskRecord>) {
        if !record.has_open_attempt() {
            // In the worker's own copy: a claim ahead stored no attempt.
            Arc::make_mut(record).begin(now_millis());
        }
        let attempt = u32::try_from(record.attempts.len()).unwrap_or(u32::MAX);
        let at = record
            .attempts
            .last()
            .map_or_else(now_millis, |a| a.started_at);
        self.emit_at(record.id, at, EventKind::Started { attempt });
    }

    /// Runs a claimed task on the worker taken for it.
    fn start_run(self: &Arc<Self>, task: Ahead) {
        let Ahead {
            mut record,
            lease,
            cancel,
        } = task;
        self.begin(&mut record);
        let guard = BackgroundGuard::new(self);
        // Boxed: a run's future is a few KiB, which tokio would otherwise
        // copy into its task and again when the task ends (a spawn per
        // run when workers are freed, as with a durable store's claims
        // ahead); boxed, it is copied once.
        self.executor.handle().spawn(Box::pin(async move {
            let inner = guard.inner();
            inner.run(record, lease, cancel).await;
        }));
    }

    /// Runs `record` on the worker taken for it, then each task the
    /// worker claims with a run's end (see [`Inner::run_one`]).
    async fn run(self: &Arc<Self>, record: Arc<TaskRecord>, lease: Lease, cancel: SharedCancel) {
        let first = record.id;
        let mut next = Some(Ahead {
            record,
            lease,
            cancel,
        });
        // Goes on from the pool's mean, as published.
        let mean_us = self.mean_run_us.load(Ordering::Relaxed);
        let progress = Arc::new(ProgressTarget {
            pool: Arc::downgrade(self),
            task: parking_lot::Mutex::new(first),
        });
        let on_progress: crate::ProgressFn = {
            let progress = Arc::clone(&progress);
            Arc::new(move |done, total| progress.report(done, total))
        };
        let mut chain = Chain {
            module: None,
            mean_us,
            published_us: mean_us,
            progress,
            on_progress,
            claim: Claim::default(),
        };
        while let Some(task) = next.take() {
            next = self.run_one(task, &mut chain).await;
            // A worker that keeps finding work would otherwise never
            // yield when nothing it awaits has to wait (trivial tasks on
            // the memory store): the runtime's other tasks (heartbeats,
            // submissions) get their turn when its budget runs out.
            tokio::task::consume_budget().await;
        }
    }

    /// Runs one task and records its end; the task its worker runs next,
    /// if it claimed one with that end.
    ///
    /// Where the backend writes a run's end and a claim together
    /// ([`Backend::complete_and_claim`] on the embedded backends), the
    /// worker claims its next task itself, with the end of this one: one
    /// write, one flush on a durable store (rather than the end's flush,
    /// then the claim's), and no hand-off to the dispatcher. It does not
    /// while tasks claimed ahead wait (they go first), while the pool is
    /// paused or stopping, when more workers run than the pool now has
    /// ([`Pool::set_workers`](crate::Pool::set_workers) lowered the count),
    /// or when the run was stopped to be put back.
    /// Otherwise the worker is free as soon as the run ends: the next task
    /// is claimed by the dispatcher while this one's end is written. The
    /// run stays in `running` (its lease renewed, `close` and `stop`
    /// waiting for it) until its end is durable.
    async fn run_one(self: &Arc<Self>, task: Ahead, chain: &mut Chain) -> Option<Ahead> {
        let Ahead {
            mut record,
            lease,
            cancel,
        } = task;
        let id = record.id;
        // From a record of the worker's own, the run takes the input rather
        // than a copy: nothing after it reads the worker's copy of the input
        // (the end is written from the store's record, and a run again
        // reads the store's). The record the store shares (a store in
        // memory) is left whole, and its input copied.
        let input = match Arc::get_mut(&mut record) {
            Some(own) => std::mem::replace(&mut own.input, Payload::Inline(Vec::new())),
            None => record.input.clone(),
        };
        let report = self.execute(&record, input, &cancel, chain).await;
        // Put back if a graceful stop killed it (a cancelled run only: the
        // running set's lock is not taken for the others).
        let put_back = report.outcome == Outcome::Cancelled
            && self.lock_running().get(&id).is_some_and(|r| r.for_stop);
        let may_go_on = !put_back
            && self.may_start()
            && self.executing.load(Ordering::Relaxed)
                <= self.active_workers.load(Ordering::Relaxed);
        let keep_worker = may_go_on && self.backend.completes_with_claim() && self.ahead_len() == 0;
        // A short run's result may be held for a moment with others
        // (`Inner::hand_over`).
        let took = report.duration;
        if !report.duration.is_zero() {
            let us = u64::try_from(report.duration.as_micros())
                .unwrap_or(u64::MAX)
                .max(1);
            self.timed(chain, us);
        }
        // Tasks claimed ahead wait, on a store that commits in groups: the
        // worker goes on to the first of them at once (its claim is
        // durable: the dispatcher flushed it before handing it out), and
        // this run's end is shown once a flush covers it, by one async
        // task for the ends of all runs meanwhile (`Inner::show_after_flush`).
        // Otherwise the worker would wait for that flush, or be freed and
        // the next task spawned as a new async task, whose wait for its
        // own end's flush is one more wake per run.
        if may_go_on
            && !keep_worker
            && self.backend.completes_unflushed()
            && let Some(mut next) = self.change_ahead(std::collections::VecDeque::pop_front)
        {
            // The dispatcher claims again what this took.
            self.work.notify_one();
            let run = completion(&record, report);
            match self.backend.complete_unflushed(&lease, run.clone()).await {
                Ok(Completed::Recorded(ended)) => self.show_after_flush(id, ended, took),
                // Not recorded at once: as any other end, tried again (and
                // found in the task's history if the call was cut off after
                // it committed) or found lost, and shown when it is.
                answer => {
                    let uncertain = matches!(&answer, Err(e) if e.is_unavailable());
                    let ours = record.attempts.last();
                    let (recorded, _) = self.record_run(ours, lease, run, None, uncertain).await;
                    self.end_shown(id, recorded, false, true, took);
                }
            }
            self.begin(&mut next.record);
            return Some(next);
        }
        if !keep_worker {
            self.executing.fetch_sub(1, Ordering::Relaxed);
            self.start_ahead();
            // On a durable store the next claim may share the flush of
            // this run's end; on another the end is recorded at once, and
            // the wake-up after it is enough.
            if self.backend.is_durable() {
                self.work.notify_one();
            }
        }
        let mut released = false;
        let mut recorded = None;
        // The chain's claim, empty: its room is used again.
        let mut claim = std::mem::take(&mut chain.claim);
        if put_back {
            match self.backend.release(&lease).await {
                Ok(done) => released = done,
                Err(e) => {
                    // The lease runs out instead, and the task runs again.
                    tracing::error!(task = %id, error = %e, "cannot put the task back in the queue");
                }
            }
        } else {
            let claim_next = keep_worker.then_some(self.config.lease_ttl);
            let run = completion(&record, report);
            // The claim's record let go before the end is written: a store
            // that keeps its records in memory then changes its own in
            // place, rather than copying it because the worker still held
            // it. Kept of it: its attempt, for the async call's check of
            // an end whose answer was lost.
            let ours = record.attempts.last().cloned();
            drop(record);
            recorded = match self.record_run_now(&lease, run, claim_next, &mut claim) {
                RecordedNow::Done(recorded) => recorded,
                RecordedNow::Later(run) => {
                    let ended;
                    (ended, claim) = self
                        .record_run(ours.as_ref(), lease, run, claim_next, false)
                        .await;
                    ended
                }
            };
        }
        // Before the end is delivered: whoever learns of it sees the worker
        // free, unless it runs another task.
        let mut next = None;
        if keep_worker {
            let unstarted;
            (next, unstarted) = self.take_claimed(&mut claim);
            for lease in unstarted {
                self.put_back_unstarted(&lease).await;
            }
            if next.is_none() {
                self.executing.fetch_sub(1, Ordering::Relaxed);
                self.start_ahead();
            }
        }
        debug_assert!(claim.claimed.is_empty() && claim.expired.is_empty());
        chain.claim = claim;
        self.end_shown(id, recorded, released, next.is_some(), took);
        match &mut next {
            Some(task) => self.begin(&mut task.record),
            None => self.work.notify_one(),
        }
        next
    }

    /// Shows the end of the run of `id`, durable by now: `recorded` (the
    /// task as recorded, or `None` if it was not), `released` (put back in
    /// the queue); `more`: its worker goes on to another task; `took`:
    /// how long the run took ([`Inner::hand_over`]).
    ///
    /// A final end is announced (event, counters) while the run is still
    /// in `running`, and delivered to waiters after it left: a waiter
    /// given the result finds the run gone and the event sent, and one
    /// that reads the stored end meanwhile sees the run still there and
    /// waits for the delivery (`Inner::wait`).
    fn end_shown(
        self: &Arc<Self>,
        id: crate::TaskId,
        recorded: Option<Arc<TaskRecord>>,
        released: bool,
        more: bool,
        took: Duration,
    ) {
        let (done, recorded) = match recorded {
            Some(record) if record.state.is_final() => (Some(record), None),
            other => (None, other),
        };
        if let Some(record) = &done {
            self.announce_finished(record);
        }
        let idle = {
            let mut running = self.lock_running();
            running.remove(&id);
            running.is_empty()
        };
        if released {
            self.entered_queue(1);
            self.emit(id, EventKind::Requeued);
        }
        if let Some(record) = done {
            self.hand_over(record, more, took);
        } else if let Some(record) = &recorded {
            self.recorded(record);
        }
        // Whoever waits for the pool to be quiet (`Inner::until_idle`,
        // `Inner::until_drained`) looks for an empty `running` first: a
        // wake while runs remain would only send it back to sleep, and
        // costs a system call into its runtime per task when `close`
        // waits on another thread. `idle` was read under the lock of the
        // removal: the last run to leave always wakes it. (A worker that
        // goes on has its next task in `running` already.)
        if idle {
            self.quiet.notify_waiters();
        }
    }

    /// Shows the end of the run of `id`, written as `record` and not yet
    /// durable, once a flush covers it. The ends that come meanwhile wait
    /// together: one async task takes them all, waits for one flush (woken
    /// once for all of them), and shows each ([`Inner::end_shown`]); then
    /// takes those that came during that flush, until none are left.
    fn show_after_flush(
        self: &Arc<Self>,
        id: crate::TaskId,
        record: Arc<TaskRecord>,
        took: Duration,
    ) {
        let start = {
            let mut unflushed = self.lock_unflushed();
            unflushed.ends.push((id, record, took));
            !std::mem::replace(&mut unflushed.showing, true)
        };
        if start {
            let guard = BackgroundGuard::new(self);
            self.executor.handle().spawn(async move {
                guard.inner().show_flushed().await;
            });
        }
    }

    fn lock_unflushed(&self) -> std::sync::MutexGuard<'_, super::Unflushed> {
        self.unflushed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The async task of [`Inner::show_after_flush`].
    async fn show_flushed(self: &Arc<Self>) {
        let mut ends = Vec::new();
        loop {
            {
                let mut unflushed = self.lock_unflushed();
                if unflushed.ends.is_empty() {
                    unflushed.showing = false;
                    return;
                }
                std::mem::swap(&mut unflushed.ends, &mut ends);
            }
            // Every end taken was written before this flush was asked for.
            let durable = match self.backend.flush().await {
                Ok(()) => true,
                Err(e) => {
                    // As when a run's end and its flush fail together: the
                    // results are not shown (they may not be on disk), and
                    // what the store's log holds decides what runs again
                    // when it is next opened.
                    tracing::error!(
                        error = %e,
                        tasks = ends.len(),
                        "cannot make the ends of runs durable; their results are not shown"
                    );
                    false
                }
            };
            for (id, record, took) in ends.drain(..) {
                self.end_shown(id, durable.then_some(record), false, false, took);
            }
        }
    }

    /// What a run's end claimed for its worker ([`Inner::run_one`]): the
    /// first task, which runs next on it (its start is announced by the
    /// caller; the worker is freed if there is none), and the leases of
    /// those that cannot start (the pool was paused or began to stop
    /// meanwhile, or a second one): the caller puts them back in the
    /// queue, as [`Inner::release_ahead`] puts back tasks claimed ahead
    /// (they never started, so no attempt or interruption is counted).
    ///
    /// Not `async`: the usual end (one task, started) has nothing to
    /// wait for, and an `async fn` here put a future of a few hundred
    /// bytes into every run's.
    fn take_claimed(&self, claim: &mut Claim) -> (Option<Ahead>, Vec<Lease>) {
        self.left_queue(claim.claimed.len() + claim.expired.len());
        for record in claim.expired.drain(..) {
            self.finished(&record);
        }
        let mut next = None;
        let mut unstarted = Vec::new();
        for (record, lease) in claim.claimed.drain(..) {
            if next.is_none() && self.may_start() {
                next = Some(self.claimed(record, lease));
            } else {
                unstarted.push(lease);
            }
        }
        (next, unstarted)
    }

    async fn execute(
        self: &Arc<Self>,
        record: &TaskRecord,
        input: Payload,
        cancel: &SharedCancel,
        chain: &mut Chain,
    ) -> RunReport {
        let id = record.id;
        let module = match &chain.module {
            Some(module) if module.hash() == record.module => module,
            _ => match self.compiled(&record.module).await {
                Ok(module) => chain.module.insert(module),
                Err(Error::InvalidModule(message)) => {
                    return RunReport::without_run(Outcome::InvalidModule(message));
                }
                Err(e) => return RunReport::without_run(Outcome::HostError(e.to_string())),
            },
        };
        *chain.progress.task.lock() = id;
        // Written as text only if the guest reads them.
        let env = RunEnv::Task {
            id,
            attempt: record.attempts.len() as u64,
        };
        let input = match input {
            Payload::Inline(bytes) => bytes,
            kept => match self.backend.read_payload(&id, Slot::Input, &kept).await {
                Ok(bytes) => bytes,
                Err(e) => {
                    return RunReport::without_run(Outcome::HostError(format!(
                        "cannot read the task's input: {e}"
                    )));
                }
            },
        };
        self.executor
            .run_shared(
                module,
                input,
                &record.limits,
                cancel,
                Some(Arc::clone(&chain.on_progress)),
                env,
            )
            .await
    }

    /// Records `run`, the end of a run ([`completion`]) whose attempt was
    /// `ours` (the claimed record's last), under its lease; the task as
    /// recorded, or `None` if the lease was lost or the backend kept
    /// failing. With `claim_next` (a lease's time to live), the same write
    /// claims a task for the worker ([`Backend::complete_and_claim`]).
    /// `uncertain`: an earlier call to record it was cut off, and may have
    /// committed.
    ///
    /// While the store is out of reach the end is tried again, with
    /// growing pauses, until it is recorded or refused: a result is never
    /// dropped because the database restarted. (The heartbeat keeps
    /// renewing the lease meanwhile: the run still counts as running.) Only
    /// a pool that stops gives up, once the outage outlasted a lease; the
    /// task then runs again elsewhere or at the next start.
    async fn record_run(
        &self,
        ours: Option<&Attempt>,
        lease: Lease,
        run: Completion,
        claim_next: Option<Duration>,
        mut uncertain: bool,
    ) -> (Option<Arc<TaskRecord>>, Claim) {
        let id = lease.task;
        let mut outage = Outage::default();
        let mut failures = 0;
        let mut wait = Duration::from_millis(50);
        let (max, ttl) = claim_limits(claim_next);
        loop {
            match self
                .backend
                .complete_and_claim(&lease, run.clone(), max, ttl)
                .await
            {
                Ok((Completed::Recorded(record), claim)) => {
                    outage.ended("recording a task's result");
                    return (Some(record), claim);
                }
                Ok((Completed::LeaseLost, _)) => {
                    outage.ended("recording a task's result");
                    if uncertain
                        && let Some(ours) = ours
                        && let Some(ours) = self.recorded_before(id, ours, &run).await
                    {
                        return (ours.map(Arc::new), Claim::default());
                    }
                    lease_lost(id);
                    return (None, Claim::default());
                }
                Err(e) if e.is_unavailable() => {
                    // A call cut off by the outage may have committed
                    // before its answer was lost.
                    uncertain = true;
                    if self.phase() >= Phase::Stopping && outage.lasted() > self.config.lease_ttl {
                        tracing::error!(
                            task = %id,
                            error = %e,
                            "cannot record the task's result before the pool stops: the store \
                             is out of reach; the task runs again when its lease expires"
                        );
                        return (None, Claim::default());
                    }
                    let pause = outage.failed("recording a task's result", &e);
                    tokio::time::sleep(pause).await;
                }
                Err(e) => {
                    failures += 1;
                    if failures >= COMPLETE_TRIES {
                        tracing::error!(
                            task = %id,
                            error = %e,
                            "cannot record the task's result; it runs again when its lease expires"
                        );
                        return (None, Claim::default());
                    }
                    tracing::warn!(task = %id, error = %e, tries = failures, "cannot record the task's result; trying again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// [`Inner::record_run`] made at once, where the backend can
    /// ([`Backend::complete_and_claim_now`]), the claim made in `claim`;
    /// [`RecordedNow::Later`] where it cannot, or where that write failed
    /// before it used the end: the async call then makes it (and tries it
    /// again as it does any other).
    fn record_run_now(
        &self,
        lease: &Lease,
        run: Completion,
        claim_next: Option<Duration>,
        claim: &mut Claim,
    ) -> RecordedNow {
        let (max, ttl) = claim_limits(claim_next);
        match self
            .backend
            .complete_and_claim_now(lease, run, max, ttl, claim)
        {
            CompletedNow::Done(Ok(Completed::Recorded(record))) => RecordedNow::Done(Some(record)),
            CompletedNow::Done(Ok(Completed::LeaseLost)) => {
                lease_lost(lease.task);
                RecordedNow::Done(None)
            }
            CompletedNow::Done(Err(e)) => {
                tracing::error!(
                    task = %lease.task,
                    error = %e,
                    "cannot record the task's result; it runs again when its lease expires"
                );
                RecordedNow::Done(None)
            }
            CompletedNow::Later(run, failed) => {
                if let Some(e) = failed {
                    tracing::warn!(task = %lease.task, error = %e, "cannot record the task's result at once; trying again");
                }
                RecordedNow::Later(run)
            }
        }
    }

    /// After a completion was refused for a lost lease, though an earlier
    /// try of it may have committed (its answer lost with the
    /// connection): whether the task's history holds this very run's end
    /// (the same attempt, started at the same time, with the same outcome
    /// and duration). `Some(Some(task))` if it does and the task is still
    /// as that run left it, `Some(None)` if it does and the task moved on
    /// since, `None` if the run's end is not there (the lease was lost
    /// indeed).
    async fn recorded_before(
        &self,
        id: crate::TaskId,
        ours: &Attempt,
        run: &Completion,
    ) -> Option<Option<TaskRecord>> {
        let stored = match self.backend.get(&id).await {
            Ok(stored) => stored?,
            Err(e) => {
                tracing::warn!(task = %id, error = %e, "cannot read the task back to see whether its result was recorded");
                return None;
            }
        };
        let at = stored.attempts.iter().position(|a| {
            a.number == ours.number
                && a.started_at == ours.started_at
                && a.duration_us == run.duration_us
                && a.outcome.as_ref() == Some(&run.outcome)
        })?;
        tracing::info!(
            task = %id,
            "the task's result was recorded before the store was cut off; its answer was lost"
        );
        let current = at + 1 == stored.attempts.len() && stored.state != TaskState::Running;
        Some(current.then_some(stored))
    }

    /// After a run's end was recorded.
    fn recorded(&self, record: &TaskRecord) {
        if record.state.is_final() {
            self.finished(record);
        } else if record.state == TaskState::Scheduled {
            self.entered_queue(1);
            let attempt = u32::try_from(record.attempts.len()).unwrap_or(u32::MAX);
            let outcome = record
                .attempts
                .last()
                .and_then(|a| a.outcome.clone())
                .unwrap_or(Outcome::HostError("no outcome recorded".into()));
            self.emit(
                record.id,
                EventKind::Retrying {
                    attempt,
                    outcome,
                    run_at: record.run_at,
                },
            );
            self.timer.notify_one();
        }
    }

    /// Tasks whose lease was lost and that the backend changed.
    fn interrupted(&self, records: &[TaskRecord]) {
        for record in records {
            // A lost lease of a task this pool runs: stop the run, its
            // result would be refused.
            if let Some(running) = self.lock_running().get(&record.id) {
                running.cancel.cancel();
            }
            if record.state.is_final() {
                self.finished(record);
            } else {
                self.entered_queue(1);
                self.emit(
                    record.id,
                    EventKind::Interrupted {
                        interruptions: record.interruptions,
                    },
                );
                self.work.notify_one();
            }
        }
    }

    /// Renews the leases of this pool's runs; with `expire`, then expires
    /// the leases nobody renewed in time.
    async fn beat(&self, expire: bool) -> Result<()> {
        let leases: Vec<Lease> = self.lock_running().values().map(|r| r.lease).collect();
        if !leases.is_empty() {
            let states = self.backend.renew(&leases, self.config.lease_ttl).await?;
            let running = self.lock_running();
            for (lease, state) in leases.iter().zip(states) {
                let Some(run) = running.get(&lease.task) else {
                    continue;
                };
                match state {
                    LeaseState::Held => {}
                    LeaseState::CancelRequested => run.cancel.cancel(),
                    LeaseState::Lost => {
                        tracing::warn!(task = %lease.task, "lost the lease of a running task; stopping it");
                        run.cancel.cancel();
                    }
                }
            }
        }
        if expire {
            let expired = self.backend.expire_leases().await?;
            self.interrupted(&expired);
        } else if leases.is_empty() {
            // Nothing to renew and nothing to expire: still reach the
            // store, so that a beat during an outage never passes for its
            // end (this host would then expire the others' leases as soon
            // as the store is back, before they could renew them).
            self.backend.counts().await?;
        }
        Ok(())
    }

    /// Moves due delayed tasks to the queue and expires overdue ones;
    /// returns when to look again.
    async fn tick(&self, outage: &mut Outage) -> Option<u64> {
        match self.backend.tick().await {
            Ok(tick) => {
                outage.ended("moving due tasks");
                if tick.promoted > 0 {
                    self.work.notify_one();
                }
                self.left_queue(tick.expired.len());
                for record in &tick.expired {
                    self.finished(record);
                }
                if tick.expired.is_empty() && tick.promoted == 0 {
                    self.quiet.notify_waiters();
                }
                tick.next
            }
            Err(e) if e.is_unavailable() => {
                let pause = outage.failed("moving due tasks", &e);
                let pause = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX);
                Some(now_millis().saturating_add(pause))
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot move due tasks to the queue; trying again in 1 s");
                Some(now_millis() + 1000)
            }
        }
    }
}

/// How many tasks a run's end claims (one, with `claim_next`, a lease's
/// time to live), and under what lease time.
fn claim_limits(claim_next: Option<Duration>) -> (usize, Duration) {
    match claim_next {
        Some(ttl) => (1, ttl),
        None => (0, Duration::ZERO),
    }
}

/// Says that a run's end was refused: its lease was lost.
fn lease_lost(task: crate::TaskId) {
    tracing::warn!(
        task = %task,
        "the task's lease was lost while it ran (its host stalled or was cut \
         off): this run's result is dropped, and the run that replaced it counts"
    );
}

/// The end of a run of `record`, as `report` tells it, to be recorded.
#[inline]
fn completion(record: &TaskRecord, report: RunReport) -> Completion {
    Completion {
        outcome: report.outcome,
        output: report.output.into(),
        log: report.log,
        progress: report.progress,
        duration_us: u64::try_from(report.duration.as_micros()).unwrap_or(u64::MAX),
        fuel_consumed: report.fuel_consumed,
        started_at: record
            .attempts
            .last()
            .map_or_else(now_millis, |a| a.started_at),
        at: now_millis(),
    }
}

async fn timer(guard: BackgroundGuard) {
    let inner = guard.inner();
    let mut outage = Outage::default();
    loop {
        let notified = inner.timer.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if inner.phase() >= Phase::Stopping {
            break;
        }
        let next = inner.tick(&mut outage).await;
        let mut sleep_ms = next.map_or(3_600_000, |at| at.saturating_sub(now_millis()).max(1));
        if inner.backend.is_shared() {
            // Another host may schedule a task earlier than anything this
            // one knows of (and die before its own timer promotes it).
            let poll = u64::try_from(inner.config.poll_interval.as_millis()).unwrap_or(u64::MAX);
            sleep_ms = sleep_ms.min(poll.max(1));
        }
        tokio::select! {
            () = notified => {}
            () = tokio::time::sleep(Duration::from_millis(sleep_ms)) => {}
        }
    }
}

/// Renews the leases of running tasks every third of the lease time, and
/// expires the leases nobody renewed.
///
/// After the store was out of reach, leases are renewed but none expired
/// for a lease's time: no host could renew its leases meanwhile, and the
/// live ones must be given the time to renew theirs before their tasks
/// are taken from them (the dead ones' leases expire a lease later).
async fn heartbeat(inner: std::sync::Weak<Inner>) {
    let period = {
        let Some(inner) = inner.upgrade() else { return };
        inner.config.lease_ttl / 3
    };
    let mut outage = Outage::default();
    let mut expire_from: Option<tokio::time::Instant> = None;
    loop {
        tokio::time::sleep(period).await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.phase() >= Phase::Stopped {
            return;
        }
        // The first beat that reaches the store again only renews.
        let expire =
            !outage.ongoing() && expire_from.is_none_or(|at| tokio::time::Instant::now() >= at);
        match inner.beat(expire).await {
            Ok(()) => {
                if outage.ended("renewing leases") {
                    expire_from = Some(tokio::time::Instant::now() + inner.config.lease_ttl);
                }
            }
            Err(e) if e.is_unavailable() => {
                // Tried again next period: leases are renewed as soon as
                // the store is back, before this host expires any.
                outage.failed("renewing leases", &e);
            }
            Err(e) => tracing::warn!(error = %e, "heartbeat failed; will retry"),
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
    let mut outage = Outage::default();
    loop {
        tokio::time::sleep(period).await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.phase() >= Phase::Stopping {
            return;
        }
        let retention = u64::try_from(inner.config.retention.as_millis()).unwrap_or(u64::MAX);
        let before = now_millis().saturating_sub(retention);
        match inner
            .backend
            .purge_finished(before, inner.config.max_results)
            .await
        {
            Ok(0) => {
                outage.ended("removing old results");
            }
            Ok(n) => {
                outage.ended("removing old results");
                tracing::debug!(removed = n, "retention removed finished tasks");
                if inner.config.gc_modules {
                    match inner.backend.gc_modules().await {
                        Ok(0) => {}
                        Ok(n) => tracing::debug!(removed = n, "removed modules no task uses"),
                        Err(e) => {
                            tracing::warn!(error = %e, "module collection failed; will retry")
                        }
                    }
                }
            }
            Err(e) if e.is_unavailable() => {
                outage.failed("removing old results", &e);
            }
            Err(e) => tracing::warn!(error = %e, "retention sweep failed; will retry"),
        }
    }
}
