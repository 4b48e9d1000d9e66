//! The embedded backend: the queue of one process, over a [`Store`] in
//! memory or on disk.
//!
//! The scheduling index (a priority heap of ready tasks, a time heap of
//! delayed ones and one of expiries, and the running tasks with their
//! leases) lives in memory behind one short lock, rebuilt from the store
//! when the backend opens. Every transition writes the store while that
//! lock is held, so index and store always agree; flushes happen after the
//! lock is let go, shared by every caller waiting for one.
//!
//! One process holds a store at a time (sled locks its directory), so the
//! leases of an embedded backend are lost only with the process: opening
//! the store again expires every lease taken before, each an
//! interruption. While the process lives, leases also expire by time like
//! a shared backend's, so that a pool whose heartbeats stall behaves the
//! same on every backend.

mod index;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use self::index::{Entry, Index, Running};
use super::{
    Backend, Cancelled, Claim, Completed, CompletedNow, Enqueued, EnqueuedNow, LeaseState, Tick,
};
use crate::store::{Inserted, StateCounts, Store, StoredModule, TaskFilter};
use crate::task::{
    Completion, INLINE_PAYLOAD, Lease, Millis, ModuleHash, Payload, Slot, TaskId, TaskRecord,
    TaskState, now_millis,
};
use crate::{Error, ModuleSettings, Result};

/// What [`EmbeddedBackend`] asks of its store's nature, once.
#[derive(Clone, Copy, Debug)]
struct StoreTraits {
    /// [`Store::changes_in_place`].
    changes_in_place: bool,
    /// Neither durable nor keeping copies ([`Store::is_durable`] false,
    /// [`Store::changes_in_place`] true): a store in memory, whose writes
    /// have no fixed cost that several could share.
    in_memory: bool,
    /// [`Store::is_durable`].
    durable: bool,
}

impl StoreTraits {
    fn of(store: &dyn Store) -> Self {
        let changes_in_place = store.changes_in_place();
        let durable = store.is_durable();
        StoreTraits {
            changes_in_place,
            in_memory: changes_in_place && !durable,
            durable,
        }
    }
}

/// A [`Backend`] over a [`Store`] of this process. See the module docs.
pub struct EmbeddedBackend {
    store: Arc<dyn Store>,
    /// What the store said of itself at open, asked once rather than by a
    /// virtual call on every claim and submission.
    traits: StoreTraits,
    /// Taken by every worker's end and claim, and by every submission to
    /// index its tasks once stored: `parking_lot`'s lock, whose waiters
    /// spin and then yield before they park, hands it between a submitter
    /// and a worker on two cores with fewer futex calls than the standard
    /// library's did (measured: about 4% more tasks a second through a
    /// pool with one worker).
    index: parking_lot::Mutex<Index>,
    /// Taken by the writes made without the index's lock: submissions
    /// (their tasks are indexed under it once stored) and modules. Each is
    /// counted ([`EmbeddedBackend::wrote`]) before it lets go, so a read
    /// that may have seen one takes this lock too before it reads the
    /// count ([`EmbeddedBackend::settled`]).
    ///
    /// A submission is stored outside the index's lock because that lock
    /// is what every run's end and claim takes: a merged write of a few
    /// thousand tasks held it for milliseconds (each task encoded, then
    /// the batch logged and applied), during which every worker that
    /// finished a run waited. Now an end waits at most for the store's
    /// own lock, which a sled store holds while the batch is logged and
    /// applied (measured, batches of 500 on sled: 4-5% more tasks a
    /// second end to end).
    unindexed_writes: parking_lot::Mutex<()>,
    /// The next lease token. Starts at a random point each open, so a
    /// token of an earlier process never names a lease of this one.
    tokens: AtomicU64,
    /// Writes made, and writes known durable: a read waits until every
    /// write before it is durable, so that nobody reads what a crash could
    /// still take back.
    written: AtomicU64,
    durable: AtomicU64,
    /// Submissions waiting to be written, several at once: see
    /// [`EmbeddedBackend::write_submissions`].
    submissions: Mutex<Vec<Submission>>,
    /// Whether a caller is writing the waiting submissions now.
    writing_submissions: AtomicBool,
    /// How many running tasks in the index have a cancel asked for: while
    /// none has, [`Backend::cancel_requested`] answers without the index's
    /// lock. Changed under that lock.
    running_cancels: AtomicUsize,
}

/// Clears the flag it holds when dropped.
struct LetGo<'a>(&'a AtomicBool);

impl Drop for LetGo<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// One caller's tasks, waiting for the write that stores them with the
/// others waiting then.
struct Submission {
    tasks: Vec<TaskRecord>,
    answer: tokio::sync::oneshot::Sender<Result<Vec<Enqueued>>>,
}

impl std::fmt::Debug for EmbeddedBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBackend")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

/// What opening an embedded backend found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Waiting tasks taken up again.
    pub waiting: usize,
    /// Tasks that were running when their process stopped: queued again,
    /// each with one more interruption.
    pub requeued: usize,
    /// Of `requeued`, tasks claimed ahead with no attempt stored
    /// ([`TaskRecord::claim_ahead`]): their runs may not have started, so
    /// the interruption they count does not end them.
    pub claimed_ahead: usize,
    /// Tasks that were running and have now ended: at `max_interruptions`,
    /// or cancelled while they ran.
    pub ended: usize,
}

/// Whether `task`'s input is too large for its record: it goes to the
/// store's files first.
fn input_goes_to_file(task: &TaskRecord) -> bool {
    task.input
        .inline()
        .is_some_and(|b| b.len() > INLINE_PAYLOAD)
}

/// Whether `run`'s output is too large for its record: it goes to the
/// store's files first.
fn output_goes_to_file(run: &Completion) -> bool {
    run.output
        .inline()
        .is_some_and(|b| b.len() > INLINE_PAYLOAD)
}

/// Writes the large inputs of `tasks` to the store's files; on a failure,
/// removes those written and fails.
fn keep_inputs(store: &dyn Store, mut tasks: Vec<TaskRecord>) -> Result<Vec<TaskRecord>> {
    for i in 0..tasks.len() {
        let task = &mut tasks[i];
        let Payload::Inline(bytes) = &mut task.input else {
            continue;
        };
        if bytes.len() <= INLINE_PAYLOAD {
            continue;
        }
        let bytes = std::mem::take(bytes);
        match store.keep_payload(&task.id, Slot::Input, 0, bytes) {
            Ok(kept) => task.input = kept,
            Err(e) => {
                for done in &tasks[..i] {
                    let _ = store.discard_payload(&done.id, Slot::Input, &done.input);
                }
                return Err(e);
            }
        }
    }
    Ok(tasks)
}

impl EmbeddedBackend {
    /// Removes the input files of tasks that were not stored.
    fn discard_inputs<'a>(&self, tasks: impl Iterator<Item = &'a TaskRecord>) {
        for task in tasks {
            if let Err(e) = self
                .store
                .discard_payload(&task.id, Slot::Input, &task.input)
            {
                tracing::warn!(task = %task.id, error = %e, "cannot remove an input no record names");
            }
        }
    }

    /// Writes the waiting submissions, unless another caller is writing
    /// them: then it writes those left when it is done. Every submission
    /// left before the call is answered by the time one of the callers
    /// that found the queue non-empty returns.
    fn write_submissions(&self) {
        loop {
            if self.writing_submissions.swap(true, Ordering::AcqRel) {
                return; // the writer takes ours too, before it lets go
            }
            // Lets go even if a write panics, so that later submissions
            // still find a writer.
            let writing = LetGo(&self.writing_submissions);
            loop {
                let waiting = std::mem::take(
                    &mut *self
                        .submissions
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner),
                );
                if waiting.is_empty() {
                    break;
                }
                self.store_submissions(waiting);
            }
            drop(writing);
            // One left between the last look and letting go has no writer.
            if self
                .submissions
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_empty()
            {
                return;
            }
        }
    }

    /// Stores the tasks of `waiting` in one write, and answers each
    /// caller. If that write fails, each caller's tasks are written on
    /// their own, so that one caller's fault (a module not stored) fails
    /// only that caller.
    fn store_submissions(&self, waiting: Vec<Submission>) {
        if let [_] = waiting.as_slice() {
            for Submission { tasks, answer } in waiting {
                let _ = answer.send(self.store_tasks(tasks));
            }
            return;
        }
        let sizes: Vec<usize> = waiting.iter().map(|s| s.tasks.len()).collect();
        let (all, answers): (Vec<Vec<TaskRecord>>, Vec<_>) =
            waiting.into_iter().map(|s| (s.tasks, s.answer)).unzip();
        let mut all = all.into_iter().flatten().collect::<Vec<_>>();
        match self.try_store_tasks(&mut all) {
            Ok(enqueued) => {
                let mut enqueued = enqueued.into_iter();
                for (size, answer) in sizes.into_iter().zip(answers) {
                    let _ = answer.send(Ok(enqueued.by_ref().take(size).collect()));
                }
            }
            Err(_) => {
                let mut all = all.into_iter();
                for (size, answer) in sizes.into_iter().zip(answers) {
                    let tasks = all.by_ref().take(size).collect();
                    let _ = answer.send(self.store_tasks(tasks));
                }
            }
        }
    }

    /// Stores `tasks` in one write and indexes them; on a failure, removes
    /// their input files and fails.
    fn store_tasks(&self, mut tasks: Vec<TaskRecord>) -> Result<Vec<Enqueued>> {
        match self.try_store_tasks(&mut tasks) {
            Ok(enqueued) => Ok(enqueued),
            Err(e) => {
                self.discard_inputs(tasks.iter());
                Err(e)
            }
        }
    }

    /// Stores `tasks` in one write and indexes them. On a failure the
    /// tasks are left in `tasks` (their input files too) and the error is
    /// given.
    fn try_store_tasks(&self, tasks: &mut Vec<TaskRecord>) -> Result<Vec<Enqueued>> {
        let inserted = self.insert_indexed(tasks)?;
        let tasks = std::mem::take(tasks);
        // A task not stored (its key was taken) leaves no file behind.
        self.discard_inputs(
            tasks
                .iter()
                .zip(&inserted)
                .filter(|(_, i)| matches!(i, Inserted::Existing(_)))
                .map(|(t, _)| t),
        );
        Ok(tasks
            .into_iter()
            .zip(inserted)
            .map(|(task, inserted)| match inserted {
                Inserted::New => Enqueued::New(Box::new(task)),
                Inserted::Existing(id) => Enqueued::Existing(id),
            })
            .collect())
    }

    /// Stores `tasks` in one write, then indexes those stored that wait;
    /// the store's answer for each.
    ///
    /// The write is made without the index's lock, under
    /// [`EmbeddedBackend::unindexed_writes`], which is held until the
    /// tasks are indexed: no claim sees a task before it is stored, and a
    /// cancel that finds a task stored but not yet indexed waits for it.
    fn insert_indexed(&self, tasks: &[TaskRecord]) -> Result<Vec<Inserted>> {
        let _writing = self.unindexed_writes.lock();
        let inserted = self.store.insert(tasks)?;
        self.wrote();
        let mut index = self.lock();
        for (task, inserted) in tasks.iter().zip(&inserted) {
            if matches!(inserted, Inserted::New) && !task.state.is_final() {
                index.insert(task);
            }
        }
        Ok(inserted)
    }

    /// Makes a write with `write` outside the index's lock, and counts it
    /// (see [`EmbeddedBackend::unindexed_writes`]).
    fn write_unindexed<T>(&self, write: impl FnOnce() -> Result<T>) -> Result<T> {
        let _writing = self.unindexed_writes.lock();
        let written = write()?;
        self.wrote();
        Ok(written)
    }

    /// Opens the backend over `store`: takes up its waiting tasks, and
    /// expires the leases of the tasks that were running when the process
    /// that held them stopped (each counts an interruption).
    pub fn open(store: Arc<dyn Store>) -> Result<Self> {
        Self::open_reporting(store).map(|(backend, _)| backend)
    }

    /// [`EmbeddedBackend::open`], saying what it found.
    pub fn open_reporting(store: Arc<dyn Store>) -> Result<(Self, Recovered)> {
        let now = now_millis();
        let mut index = Index::default();
        let mut recovered = Recovered::default();
        for mut record in store.unfinished()? {
            if record.state == TaskState::Running {
                let ahead = !record.has_open_attempt();
                record.interrupt(now);
                if !store.update(&record, TaskState::Running)? {
                    return Err(Error::Store(format!(
                        "task {} changed while the store was being opened",
                        record.id
                    )));
                }
                if record.state.is_final() {
                    tracing::warn!(
                        task = %record.id,
                        interruptions = record.interruptions,
                        outcome = ?record.outcome,
                        "a task that was running when the host stopped has ended"
                    );
                    recovered.ended += 1;
                    continue;
                }
                tracing::info!(
                    task = %record.id,
                    interruptions = record.interruptions,
                    claimed_ahead = ahead,
                    "a task that was running (or claimed ahead) when the host stopped is \
                     queued again"
                );
                recovered.claimed_ahead += usize::from(ahead);
                recovered.requeued += 1;
            } else {
                recovered.waiting += 1;
            }
            index.insert(&record);
        }
        if recovered.requeued + recovered.ended > 0 {
            store.flush_blocking()?;
        }
        Ok((
            EmbeddedBackend {
                traits: StoreTraits::of(&*store),
                store,
                index: parking_lot::Mutex::new(index),
                unindexed_writes: parking_lot::Mutex::new(()),
                tokens: AtomicU64::new(fastrand::u64(1..u64::MAX / 2)),
                written: AtomicU64::new(0),
                durable: AtomicU64::new(0),
                submissions: Mutex::new(Vec::new()),
                writing_submissions: AtomicBool::new(false),
                running_cancels: AtomicUsize::new(0),
            },
            recovered,
        ))
    }

    /// The store underneath.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, Index> {
        self.index.lock()
    }

    /// Counts a write of a task, made with the index locked (and counted
    /// before it is unlocked: [`EmbeddedBackend::settled`] relies on it).
    /// Only on a durable store, the only one whose count is read: on
    /// another it would be a shared counter written by every submitter
    /// and worker for nothing.
    fn wrote(&self) {
        if self.traits.durable {
            self.written.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Makes every write so far durable (group commit in the store).
    async fn flush_writes(&self) -> Result<()> {
        // A store that is not durable has nothing to wait for (its flush
        // does nothing), and `durable` is read only for stores that are.
        if !self.store.is_durable() {
            return Ok(());
        }
        let target = self.written.load(Ordering::SeqCst);
        self.store.flush().await?;
        self.durable.fetch_max(target, Ordering::SeqCst);
        Ok(())
    }

    /// After a read: waits until every write the read may have seen is
    /// durable, so that nothing is shown before it is.
    ///
    /// It must come after the read, and count under the index lock: a
    /// write made between a check before the read and the read itself
    /// would be seen, not yet durable (a claim seen `running` whose host
    /// died before its flush, never counted as an interruption). Task
    /// writes are made and counted with the index locked, so the count
    /// taken under the lock after the read covers every write it saw.
    ///
    /// A store that is not durable shows its writes at once: nothing to
    /// wait for, and no lock taken.
    async fn settled(&self) -> Result<()> {
        if !self.store.is_durable() {
            return Ok(());
        }
        let seen = {
            let _writing = self.unindexed_writes.lock();
            let _index = self.lock();
            self.written.load(Ordering::SeqCst)
        };
        if self.durable.load(Ordering::SeqCst) < seen {
            self.flush_writes().await?;
        }
        Ok(())
    }

    /// `read`, once every write it may have seen is durable.
    async fn settled_read<T>(&self, read: Result<T>) -> Result<T> {
        let value = read?;
        self.settled().await?;
        Ok(value)
    }

    /// The record of the waiting task `id` (indexed), read from the store,
    /// when the store holds it as the index does. A task the store holds
    /// otherwise leaves the index, with an error logged: the store is the
    /// truth, and the next open rebuilds the index from it.
    fn load_waiting(&self, index: &mut Index, id: TaskId) -> Result<Option<TaskRecord>> {
        let Some(waiting) = index.pending(&id) else {
            return Ok(None);
        };
        match self.store.get(&id)? {
            Some(record) if waiting.matches(&record) => Ok(Some(record)),
            other => {
                index.remove_pending(&id);
                tracing::error!(
                    task = %id,
                    stored = ?other.map(|r| r.state),
                    "the task changed in the store behind the queue's back; skipped"
                );
                Ok(None)
            }
        }
    }

    /// Claims up to `max` ready tasks with the index locked, then up to
    /// `ahead` more ahead of a free worker, writing them (not flushed):
    /// [`Backend::claim_ahead`] without its flush.
    ///
    /// `now` is the claim's time (a run's end that claims the next task
    /// passes its own, rather than read the clock again).
    fn claim_locked(
        &self,
        index: &mut Index,
        claim: &mut Claim,
        max: usize,
        ahead: usize,
        ttl: Duration,
        now: Millis,
    ) -> Result<()> {
        debug_assert!(claim.claimed.is_empty() && claim.expired.is_empty());
        let all = max.saturating_add(ahead);
        while claim.claimed.len() < all {
            let Some((id, waiting)) = index.peek_ready() else {
                break;
            };
            let lease = self.lease(id, now, ttl);
            let for_later = claim.claimed.len() >= max;
            let mut expired = false;
            let mut found = None;
            // Read, checked against the index and changed in one call:
            // the memory store changes its record in place.
            let written = self.store.update_shared(&id, &mut |record| {
                found = Some(record.state);
                if !waiting.matches(record) {
                    return false;
                }
                expired = record.expires_at.is_some_and(|at| at <= now);
                if expired {
                    record.expire(now);
                } else if for_later {
                    record.claim_ahead(lease, now);
                } else {
                    record.start(lease, now);
                }
                true
            });
            if !matches!(written, Ok(None)) {
                self.wrote();
            }
            match written {
                Ok(Some(record)) => {
                    index.remove_pending(&id);
                    if expired {
                        claim.expired.push(Arc::unwrap_or_clone(record));
                    } else {
                        if record.cancel_requested {
                            self.running_cancels.fetch_add(1, Ordering::SeqCst);
                        }
                        let keep = !self.traits.changes_in_place;
                        index.running.insert(record.id, Running::new(&record, keep));
                        if claim.claimed.capacity() == 0 {
                            // Records are large: room for what is asked at
                            // once, not the doubling from four.
                            claim.claimed.reserve_exact(all.min(64));
                        }
                        claim.claimed.push((record, lease));
                    }
                }
                // The store is the truth: a task it no longer holds in
                // this state leaves the index (the next open rebuilds it).
                Ok(None) => {
                    index.remove_pending(&id);
                    tracing::error!(
                        task = %id,
                        stored = ?found,
                        "the task changed in the store behind the queue's back; skipped"
                    );
                }
                // Nothing is lost: the task stays in the queue, and
                // what was claimed so far is handed out.
                Err(e) if claim.claimed.is_empty() && claim.expired.is_empty() => {
                    return Err(e);
                }
                Err(e) => {
                    tracing::error!(task = %id, error = %e, "cannot claim the task");
                    break;
                }
            }
        }
        Ok(())
    }

    /// Takes a task out of the running ones in the index.
    fn leave_running(&self, index: &mut Index, id: &TaskId) {
        if index.running.remove(id).is_some_and(|r| r.cancel_requested) {
            self.running_cancels.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Changes the record of the running task `id`, held under
    /// `running`'s lease, with `change`, and writes it: from the index's
    /// copy where it keeps one, else in place in the store. The record as
    /// written, or `None` if the store's is no longer as the index has it.
    fn change_running(
        &self,
        id: &TaskId,
        running: &Running,
        change: &mut dyn FnMut(&mut TaskRecord),
    ) -> Result<Option<Arc<TaskRecord>>> {
        let current = |record: &mut TaskRecord| {
            record.lease = Some(running.lease);
            record.cancel_requested = running.cancel_requested;
        };
        match &running.record {
            Some(kept) => {
                let mut record = TaskRecord::clone(kept);
                current(&mut record);
                change(&mut record);
                let written = self.store.update(&record, TaskState::Running)?;
                Ok(written.then(|| Arc::new(record)))
            }
            None => self.store.update_shared(id, &mut |record| {
                if !record.is_held_by(&running.lease) {
                    return false;
                }
                current(record);
                change(record);
                true
            }),
        }
    }

    /// Writes the end of the run under `lease` and claims up to `max`
    /// ready tasks, under one lock of the index, without flushing:
    /// [`Backend::complete_and_claim`] flushes after it,
    /// [`Backend::complete_unflushed`] leaves that to its caller.
    async fn end_and_claim(
        &self,
        lease: &Lease,
        mut run: Completion,
        max: usize,
        ttl: Duration,
    ) -> Result<(Completed, Claim)> {
        // A large output goes to the store's file first, outside the lock
        // (it is written and synced), and is named by the record after.
        if output_goes_to_file(&run)
            && let Payload::Inline(bytes) = &mut run.output
        {
            let bytes = std::mem::take(bytes);
            let store = self.store.clone();
            let (task, token) = (lease.task, lease.token);
            run.output = tokio::task::spawn_blocking(move || {
                store.keep_payload(&task, Slot::Output, token, bytes)
            })
            .await
            .map_err(|e| Error::Store(format!("keeping an output panicked: {e}")))??;
        }
        let mut claim = Claim::default();
        let completed = self
            .end_and_claim_kept(lease, run, max, ttl, &mut claim)
            .map_err(|(e, _)| e)?;
        Ok((completed, claim))
    }

    /// [`EmbeddedBackend::end_and_claim`] once a large output is in the
    /// store's files (`run` holds it inline only if it is small), the
    /// claim made in `claim` (empty when given). A failure gives `run`
    /// back if it was not used (the store refused the change before
    /// making it), with a file it named removed.
    fn end_and_claim_kept(
        &self,
        lease: &Lease,
        run: Completion,
        max: usize,
        ttl: Duration,
        claim: &mut Claim,
    ) -> std::result::Result<Completed, (Error, Option<Box<Completion>>)> {
        let discard = |output: &Payload| {
            if let Err(e) = self
                .store
                .discard_payload(&lease.task, Slot::Output, output)
            {
                tracing::warn!(task = %lease.task, error = %e, "cannot remove an output no record names");
            }
        };
        let record = {
            let mut index = self.lock();
            let held = index
                .running
                .get(&lease.task)
                .filter(|running| running.is_held_by(lease));
            let Some(running) = held else {
                drop(index);
                discard(&run.output);
                return Ok(Completed::LeaseLost);
            };
            // What to remove if the end is not recorded after all: a file
            // of the store's (an inline output goes with the record, and
            // is not copied for this).
            let output = match &run.output {
                Payload::File { .. } => run.output.clone(),
                Payload::Inline(_) => Payload::Inline(Vec::new()),
            };
            let at = run.at;
            let mut run = Some(run);
            let written = self.change_running(&lease.task, running, &mut |record| {
                record.complete(run.take().expect("a run ends once"));
            });
            let written = written.and_then(|record| {
                record.ok_or_else(|| {
                    Error::Store(format!(
                        "task {} changed in the store behind the queue's back",
                        lease.task
                    ))
                })
            });
            let record = match written {
                Ok(record) => record,
                Err(e) => {
                    drop(index);
                    discard(&output);
                    return Err((e, run.map(Box::new)));
                }
            };
            self.wrote();
            self.leave_running(&mut index, &lease.task);
            if !record.state.is_final() {
                index.insert(&record);
            }
            // The end is written: a failed claim leaves the tasks queued,
            // for the dispatcher.
            if max > 0
                && let Err(e) = self.claim_locked(&mut index, claim, max, 0, ttl, at)
            {
                tracing::warn!(error = %e, "cannot claim the next task after a run; the dispatcher will");
            }
            record
        };
        Ok(Completed::Recorded(record))
    }

    fn lease(&self, task: TaskId, now: Millis, ttl: Duration) -> Lease {
        Lease {
            task,
            token: self.tokens.fetch_add(1, Ordering::Relaxed),
            expires_at: now.saturating_add(millis(ttl)),
        }
    }
}

fn millis(d: Duration) -> Millis {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[async_trait::async_trait]
impl Backend for EmbeddedBackend {
    async fn put_module(&self, hash: &ModuleHash, bytes: &[u8]) -> Result<()> {
        self.write_unindexed(|| self.store.put_module(hash, bytes))?;
        self.flush_writes().await
    }

    async fn module(&self, hash: &ModuleHash) -> Result<Option<Vec<u8>>> {
        self.settled_read(self.store.module(hash)).await
    }

    async fn modules(&self) -> Result<Vec<StoredModule>> {
        self.settled_read(self.store.modules()).await
    }

    async fn delete_module(&self, hash: &ModuleHash) -> Result<bool> {
        let deleted = self.write_unindexed(|| self.store.delete_module(hash))?;
        self.flush_writes().await?;
        Ok(deleted)
    }

    async fn put_module_settings(
        &self,
        hash: &ModuleHash,
        settings: &ModuleSettings,
    ) -> Result<()> {
        self.write_unindexed(|| self.store.put_module_settings(hash, settings))?;
        self.flush_writes().await
    }

    async fn module_settings(&self, hash: &ModuleHash) -> Result<Option<ModuleSettings>> {
        self.settled_read(self.store.module_settings(hash)).await
    }

    async fn enqueue(&self, mut tasks: Vec<TaskRecord>) -> Result<Vec<Enqueued>> {
        for task in &mut tasks {
            task.seq = self.store.next_seq()?;
        }
        // Large inputs go to the store's files first, outside the lock; the
        // records, and so the index, hold only their size.
        if tasks.iter().any(input_goes_to_file) {
            let store = self.store.clone();
            tasks = tokio::task::spawn_blocking(move || keep_inputs(&*store, tasks))
                .await
                .map_err(|e| Error::Store(format!("keeping inputs panicked: {e}")))??;
        }
        // A store in memory writes as cheaply alone as in company, and
        // has no flush to share: written at once, with no hand-off.
        if self.traits.in_memory {
            return self.store_tasks(tasks);
        }
        // Concurrent submissions share one write (and then one flush):
        // each caller leaves its tasks, and whoever finds no write under
        // way writes everything left so far.
        let (answer, answered) = tokio::sync::oneshot::channel();
        self.submissions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Submission { tasks, answer });
        self.write_submissions();
        let answers = answered
            .await
            .map_err(|_| Error::Store("the write of a submission was lost".into()))??;
        self.flush_writes().await?;
        Ok(answers)
    }

    /// On a store in memory, with the input in the record: the store keeps
    /// the record given ([`Store::insert_owned`]), indexed by what the
    /// index needs of it, read before.
    fn enqueue_one_now(&self, mut task: Box<TaskRecord>) -> EnqueuedNow {
        if !self.traits.in_memory || input_goes_to_file(&task) {
            return EnqueuedNow::Later(task);
        }
        EnqueuedNow::Done((|| {
            task.seq = self.store.next_seq()?;
            let entry = Entry::of(&task);
            let indexed = !task.state.is_final();
            let _writing = self.unindexed_writes.lock();
            let inserted = self.store.insert_owned(task)?;
            self.wrote();
            if inserted == Inserted::New && indexed {
                self.lock().insert_entry(entry);
            }
            Ok(inserted)
        })())
    }

    async fn claim(&self, max: usize, ttl: Duration) -> Result<Claim> {
        self.claim_ahead(max, 0, ttl).await
    }

    async fn claim_ahead(&self, max: usize, ahead: usize, ttl: Duration) -> Result<Claim> {
        let mut claim = Claim::default();
        self.claim_locked(&mut self.lock(), &mut claim, max, ahead, ttl, now_millis())?;
        if !claim.claimed.is_empty() || !claim.expired.is_empty() {
            self.flush_writes().await?;
        }
        Ok(claim)
    }

    async fn renew(&self, leases: &[Lease], ttl: Duration) -> Result<Vec<LeaseState>> {
        let now = now_millis();
        let mut index = self.lock();
        Ok(leases
            .iter()
            .map(|lease| match index.running.get_mut(&lease.task) {
                Some(running) if running.is_held_by(lease) => {
                    running.lease.expires_at = now.saturating_add(millis(ttl));
                    if running.cancel_requested {
                        LeaseState::CancelRequested
                    } else {
                        LeaseState::Held
                    }
                }
                _ => LeaseState::Lost,
            })
            .collect())
    }

    async fn complete(&self, lease: &Lease, run: Completion) -> Result<Completed> {
        let (completed, _) = self
            .complete_and_claim(lease, run, 0, Duration::ZERO)
            .await?;
        Ok(completed)
    }

    /// The end and the claim are written under one lock of the index, and
    /// made durable by one flush.
    async fn complete_and_claim(
        &self,
        lease: &Lease,
        run: Completion,
        max: usize,
        ttl: Duration,
    ) -> Result<(Completed, Claim)> {
        let (completed, claim) = self.end_and_claim(lease, run, max, ttl).await?;
        if matches!(completed, Completed::Recorded(_)) {
            self.flush_writes().await?;
        }
        Ok((completed, claim))
    }

    fn completes_with_claim(&self) -> bool {
        true
    }

    /// On a store in memory, whose writes need no flush: at once, unless
    /// the output goes to the store's files.
    fn complete_and_claim_now(
        &self,
        lease: &Lease,
        run: Completion,
        max: usize,
        ttl: Duration,
        claim: &mut Claim,
    ) -> CompletedNow {
        if !self.traits.in_memory || output_goes_to_file(&run) {
            return CompletedNow::Later(run, None);
        }
        match self.end_and_claim_kept(lease, run, max, ttl, claim) {
            Ok(completed) => CompletedNow::Done(Ok(completed)),
            Err((e, Some(run))) => CompletedNow::Later(*run, Some(e)),
            Err((e, None)) => CompletedNow::Done(Err(e)),
        }
    }

    async fn complete_unflushed(&self, lease: &Lease, run: Completion) -> Result<Completed> {
        Ok(self.end_and_claim(lease, run, 0, Duration::ZERO).await?.0)
    }

    /// Where the store commits in groups: a flush awaited for many ends
    /// saves a wait per end.
    fn completes_unflushed(&self) -> bool {
        self.store.is_durable()
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        let mut index = self.lock();
        let Some(running) = index.running.get(&lease.task) else {
            return Ok(false);
        };
        if !running.is_held_by(lease) {
            return Ok(false);
        }
        let now = now_millis();
        let written =
            self.change_running(&lease.task, running, &mut |record| record.release(now))?;
        self.wrote();
        self.leave_running(&mut index, &lease.task);
        let Some(record) = written else {
            tracing::error!(task = %lease.task, "the task changed in the store behind the queue's back; not put back");
            return Ok(false);
        };
        if !record.state.is_final() {
            index.insert(&record);
        }
        Ok(true)
    }

    async fn expire_leases(&self) -> Result<Vec<TaskRecord>> {
        let changed = {
            let mut index = self.lock();
            let now = now_millis();
            let lost: Vec<TaskId> = index
                .running
                .iter()
                .filter(|(_, running)| running.lease.expires_at <= now)
                .map(|(id, _)| *id)
                .collect();
            let mut changed = Vec::with_capacity(lost.len());
            for id in lost {
                let running = index.running.get(&id).expect("listed");
                let written =
                    self.change_running(&id, running, &mut |record| record.interrupt(now));
                self.wrote();
                let record = match written {
                    Ok(Some(record)) => record,
                    Ok(None) => {
                        self.leave_running(&mut index, &id);
                        tracing::error!(task = %id, "the task changed in the store behind the queue's back; its lease is dropped");
                        continue;
                    }
                    Err(e) => {
                        // Still held in the index: the next expiry tries again.
                        tracing::error!(task = %id, error = %e, "cannot expire the task's lease");
                        break;
                    }
                };
                self.leave_running(&mut index, &id);
                if !record.state.is_final() {
                    index.insert(&record);
                }
                changed.push(Arc::unwrap_or_clone(record));
            }
            changed
        };
        if !changed.is_empty() {
            self.flush_writes().await?;
        }
        Ok(changed)
    }

    async fn tick(&self) -> Result<Tick> {
        let mut tick = Tick::default();
        {
            let mut index = self.lock();
            let now = now_millis();
            while let Some(id) = index.peek_due(now) {
                let Some(mut record) = self.load_waiting(&mut index, id)? else {
                    continue;
                };
                record.promote(now);
                let written = self.store.update(&record, TaskState::Scheduled);
                self.wrote();
                // On an error the task stays indexed as it is stored.
                let written = written?;
                index.remove_pending(&id);
                if written {
                    index.insert(&record);
                    tick.promoted += 1;
                } else {
                    tracing::error!(task = %id, "the task changed in the store behind the queue's back; skipped");
                }
            }
            while let Some(id) = index.peek_expired(now) {
                let mut record = match self.load_waiting(&mut index, id) {
                    Ok(Some(record)) => record,
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::error!(task = %id, error = %e, "cannot read the task to expire it");
                        tick.next = Some(now.saturating_add(1000));
                        break;
                    }
                };
                let from = record.state;
                record.expire(now);
                let written = self.store.update(&record, from);
                self.wrote();
                match written {
                    Ok(true) => {
                        index.remove_pending(&id);
                        tick.expired.push(record);
                    }
                    Ok(false) => {
                        index.remove_pending(&id);
                        tracing::error!(task = %id, "the task changed in the store behind the queue's back; skipped");
                    }
                    Err(e) => {
                        // Still in the index; what expired so far is
                        // reported (it is stored), and the timer looks
                        // again soon.
                        tracing::error!(task = %id, error = %e, "cannot expire the task");
                        tick.next = Some(now.saturating_add(1000));
                        break;
                    }
                }
            }
            tick.next = tick.next.or(index.next_wake());
        }
        if !tick.expired.is_empty() {
            self.flush_writes().await?;
        }
        Ok(tick)
    }

    async fn cancel(&self, id: &TaskId) -> Result<Cancelled> {
        // A task found stored but in neither of the index's sets may be one
        // of a submission being indexed: looked for once more after it.
        let mut looked_again = false;
        let record = loop {
            let mut index = self.lock();
            if let Some(running) = index.running.get_mut(id) {
                if !running.cancel_requested {
                    let marked = self.change_running(id, running, &mut |record| {
                        record.cancel_requested = true;
                    })?;
                    self.wrote();
                    if marked.is_none() {
                        return Err(Error::Store(format!(
                            "task {id} changed in the store behind the queue's back"
                        )));
                    }
                    running.cancel_requested = true;
                    self.running_cancels.fetch_add(1, Ordering::SeqCst);
                }
                return Ok(Cancelled::Requested);
            }
            let waiting = match index.pending(id) {
                Some(_) => self.load_waiting(&mut index, *id)?,
                None => None,
            };
            let Some(mut record) = waiting else {
                drop(index);
                match self.store.get(id)? {
                    None => return Ok(Cancelled::NotFound),
                    Some(record) if record.state.is_final() => {
                        return Ok(Cancelled::AlreadyFinished(record.state));
                    }
                    // Stored, yet neither waiting nor running in the index:
                    // one of a submission being indexed now, which holds
                    // this lock until it is.
                    Some(_) if !looked_again => {
                        looked_again = true;
                        drop(self.unindexed_writes.lock());
                        continue;
                    }
                    Some(record) => {
                        return Err(Error::Store(format!(
                            "task {id} is {} in the store but not in the queue",
                            record.state
                        )));
                    }
                }
            };
            let from = record.state;
            record.cancel_waiting(now_millis());
            let written = self.store.update(&record, from);
            self.wrote();
            if !written? {
                index.remove_pending(id);
                return Err(Error::Store(format!(
                    "task {id} changed in the store behind the queue's back"
                )));
            }
            index.remove_pending(id);
            break record;
        };
        self.flush_writes().await?;
        Ok(Cancelled::Cancelled(Box::new(record)))
    }

    async fn get(&self, id: &TaskId) -> Result<Option<TaskRecord>> {
        self.settled_read(self.store.get(id)).await
    }

    /// On a store that decodes what it reads, the index answers first for
    /// a task it knows unfinished; a read waits for durability only if it
    /// found the task final.
    async fn get_final(&self, id: &TaskId) -> Result<Option<Box<TaskRecord>>> {
        if !self.traits.changes_in_place && self.known_unfinished(id) {
            return Ok(None);
        }
        match self.store.get_final(id)? {
            Some(record) => self.settled_read(Ok(Some(Box::new(record)))).await,
            None => Ok(None),
        }
    }

    /// On a store in memory, whose writes are seen as they are made: what
    /// it reads is shown at once (there is no flush to wait for).
    fn read_final_now(
        &self,
        id: &TaskId,
        read: &mut dyn FnMut(&TaskRecord),
    ) -> Option<Result<bool>> {
        if !self.traits.in_memory {
            return None;
        }
        Some(self.store.read_final(id, read))
    }

    /// From the index: its waiting and running tasks.
    fn known_unfinished(&self, id: &TaskId) -> bool {
        self.lock().holds(id)
    }

    /// From the index: `cancel` marks the running record there.
    ///
    /// Without the lock while no running task is marked: `cancel` counts
    /// its mark before the pool looks for the run to kill, and the pool
    /// asks here after it put the run where `cancel` looks; so either the
    /// pool sees the count, or the cancel sees the run.
    fn cancel_requested(&self, id: &TaskId) -> bool {
        if self.running_cancels.load(Ordering::SeqCst) == 0 {
            return false;
        }
        self.lock()
            .running
            .get(id)
            .is_some_and(|running| running.cancel_requested)
    }

    async fn by_key(&self, key: &str) -> Result<Option<TaskId>> {
        self.settled_read(self.store.by_key(key)).await
    }

    async fn list(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>> {
        self.settled_read(self.store.list(filter)).await
    }

    async fn counts(&self) -> Result<StateCounts> {
        self.settled_read(self.store.counts()).await
    }

    async fn purge_finished(&self, before: Millis, keep: Option<u64>) -> Result<u64> {
        self.store.purge_finished(before, keep)
    }

    async fn delete_finished(&self, ids: &[TaskId]) -> Result<Vec<TaskId>> {
        let removed = {
            // Final tasks are not in the index; the lock orders this write
            // with the others.
            let _index = self.lock();
            let removed = self.store.remove_finished(ids)?;
            self.wrote();
            removed
        };
        self.flush_writes().await?;
        Ok(removed)
    }

    async fn gc_modules(&self) -> Result<u64> {
        self.store.gc_modules()
    }

    async fn flush(&self) -> Result<()> {
        self.flush_writes().await
    }

    async fn read_payload(&self, task: &TaskId, slot: Slot, payload: &Payload) -> Result<Vec<u8>> {
        if let Payload::Inline(bytes) = payload {
            return Ok(bytes.clone());
        }
        let store = self.store.clone();
        let (task, payload) = (*task, payload.clone());
        tokio::task::spawn_blocking(move || store.read_payload(&task, slot, &payload))
            .await
            .map_err(|e| Error::Store(format!("reading a payload panicked: {e}")))?
    }

    fn payload_file(
        &self,
        task: &TaskId,
        slot: Slot,
        payload: &Payload,
    ) -> Option<std::path::PathBuf> {
        self.store.payload_file(task, slot, payload)
    }

    fn stored_output_bytes(&self) -> u64 {
        self.store.stored_output_bytes()
    }

    fn is_durable(&self) -> bool {
        self.store.is_durable()
    }
}
