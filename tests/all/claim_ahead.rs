//! Claiming ahead (`PoolConfig::claim_ahead`): short tasks claimed in
//! groups still run once each, in order, with their events; a stop or a
//! pause puts what was claimed ahead back with nothing counted; a cancel
//! reaches a task claimed ahead; a crash counts an interruption against
//! every task claimed, but ends only those that had started. Real sled
//! files, real WASM.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wpool::store::{SledOptions, SledStore, Store};
use wpool::{
    EventKind, ModuleHash, Outcome, Pool, PoolConfig, TaskHandle, TaskId, TaskSpec, TaskState,
};
use wpool_test_artifacts as programs;

use wpool::backend::{Backend as _, Completed, EmbeddedBackend};

use crate::util::{Hooked, Hooks, read};

fn open(dir: &Path) -> Arc<SledStore> {
    Arc::new(SledStore::open(dir, &SledOptions::new()).unwrap())
}

fn config(workers: usize) -> PoolConfig {
    let mut config = PoolConfig::new();
    config.workers(workers).claim_ahead(64);
    config
}

async fn module(pool: &Pool, path: &str) -> ModuleHash {
    pool.register(&read(path)).await.unwrap()
}

/// Runs a few short tasks, so that the pool knows its tasks are short and
/// claims ahead.
async fn warm_up(pool: &Pool, echo: ModuleHash) {
    for _ in 0..48 {
        let handle = pool.submit(TaskSpec::new(echo, Vec::new())).await.unwrap();
        handle.wait().await.unwrap();
    }
}

/// A sled store in a temporary directory, a pool of one worker claiming
/// ahead over it, and the echo module, warmed up.
async fn one_worker_warmed_up() -> (tempfile::TempDir, Arc<SledStore>, Pool, ModuleHash) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let pool = Pool::with_store(config(1), store.clone()).unwrap();
    let echo = module(&pool, programs::P1_ECHO).await;
    warm_up(&pool, echo).await;
    (dir, store, pool, echo)
}

/// Waits for each of `ids` (whose input was its index) and checks that it
/// ran once, echoing its input, with no interruption counted unless
/// `interruptions` says so.
async fn each_ran_once(pool: &Pool, ids: &[TaskId], interruptions: u32) {
    for (i, id) in ids.iter().enumerate() {
        let result = pool.wait(*id).await.unwrap();
        assert_eq!(result.state, TaskState::Succeeded);
        assert_eq!(result.output, format!("{i}").into_bytes());
        assert_eq!(result.attempts.len(), 1);
        assert_eq!(result.interruptions, interruptions, "{id}");
    }
}

/// Occupies the only worker with a task sleeping `ms`, then submits `n`
/// short tasks and waits until the store shows them all claimed (running)
/// while the worker is still busy: claimed ahead.
async fn claimed_ahead(
    pool: &Pool,
    store: &dyn Store,
    echo: ModuleHash,
    ms: u64,
    n: usize,
) -> (TaskHandle, Vec<TaskId>) {
    let sleep = module(pool, programs::P1_SLEEP).await;
    let sleeper = pool
        .submit(TaskSpec::new(sleep, ms.to_string().into_bytes()).max_interruptions(1))
        .await
        .unwrap();
    while store.get(&sleeper.id()).unwrap().unwrap().state != TaskState::Running {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut ids = Vec::new();
    for i in 0..n {
        let spec = TaskSpec::new(echo, format!("{i}").into_bytes()).max_interruptions(1);
        ids.push(pool.submit(spec).await.unwrap().id());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ids
        .iter()
        .all(|id| store.get(id).unwrap().unwrap().state == TaskState::Running)
    {
        assert!(
            Instant::now() < deadline,
            "the short tasks were not claimed ahead while the worker was busy"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        pool.stats().await.unwrap().busy,
        1,
        "only the sleeper holds the worker"
    );
    (sleeper, ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_claimed_ahead_each_run_once_with_their_events() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let pool = Pool::with_store(config(2), store.clone()).unwrap();
    let echo = module(&pool, programs::P1_ECHO).await;
    warm_up(&pool, echo).await;
    let mut events = pool.subscribe();
    let specs = (0..300).map(|i| TaskSpec::new(echo, format!("{i}").into_bytes()));
    let handles: Vec<TaskHandle> = pool
        .submit_many(specs)
        .await
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    for (i, handle) in handles.iter().enumerate() {
        let result = handle.wait().await.unwrap();
        assert_eq!(result.state, TaskState::Succeeded);
        assert_eq!(result.output, format!("{i}").into_bytes());
        assert_eq!(result.attempts.len(), 1);
        assert_eq!(result.interruptions, 0);
    }
    // Every task: started once, then succeeded, in that order.
    let mut seen: std::collections::HashMap<TaskId, Vec<&'static str>> = Default::default();
    while let Ok(Some(event)) = events.try_recv() {
        let kind = match event.kind {
            EventKind::Started { attempt } => {
                assert_eq!(attempt, 1);
                "started"
            }
            EventKind::Succeeded => "succeeded",
            _ => continue,
        };
        seen.entry(event.id).or_default().push(kind);
    }
    for handle in &handles {
        assert_eq!(
            seen.get(&handle.id()).map(Vec::as_slice),
            Some(&["started", "succeeded"][..]),
            "events of {}",
            handle.id()
        );
    }
    let stats = pool.stats().await.unwrap();
    assert_eq!(stats.busy, 0);
    assert_eq!(stats.counts.get(TaskState::Running), 0);
    pool.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_puts_tasks_claimed_ahead_back_with_nothing_counted() {
    let (_dir, store, pool, echo) = one_worker_warmed_up().await;
    let mut events = pool.subscribe();
    let (sleeper, ids) = claimed_ahead(&pool, store.as_ref(), echo, 4_000, 3).await;
    pool.stop_with_grace(Duration::from_secs(20)).await.unwrap();

    // The sleeper finished within the grace; the tasks claimed ahead never
    // started, and are queued again as if never claimed.
    assert_eq!(
        store.get(&sleeper.id()).unwrap().unwrap().state,
        TaskState::Succeeded
    );
    for id in &ids {
        let record = store.get(id).unwrap().unwrap();
        assert_eq!(record.state, TaskState::Queued, "{id}");
        assert!(record.attempts.is_empty(), "{id}: {:?}", record.attempts);
        assert_eq!(record.interruptions, 0);
        assert_eq!(record.lease, None);
    }
    while let Ok(Some(event)) = events.try_recv() {
        assert!(
            !ids.contains(&event.id) || matches!(event.kind, EventKind::Submitted),
            "a task claimed ahead and put back sent {:?}",
            event.kind
        );
    }
    drop(pool);

    // A new pool runs them, each once.
    let pool = Pool::with_store(config(1), store.clone()).unwrap();
    each_ran_once(&pool, &ids, 0).await;
    pool.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_puts_tasks_claimed_ahead_back_and_a_cancel_reaches_them() {
    let (_dir, store, pool, echo) = one_worker_warmed_up().await;

    // A cancel of a task claimed ahead: it ends cancelled, and the others
    // run.
    let (sleeper, ids) = claimed_ahead(&pool, store.as_ref(), echo, 4_000, 3).await;
    assert_eq!(
        pool.cancel(ids[1]).await.unwrap(),
        wpool::CancelResult::Killed
    );
    let cancelled = pool.wait(ids[1]).await.unwrap();
    assert_eq!(cancelled.state, TaskState::Cancelled);
    assert_eq!(cancelled.outcome, Some(Outcome::Cancelled));
    for (i, id) in ids.iter().enumerate().filter(|(i, _)| *i != 1) {
        let result = pool.wait(*id).await.unwrap();
        assert_eq!(result.output, format!("{i}").into_bytes());
    }
    sleeper.wait().await.unwrap();
    // The sleeper's run counts in the mean: the pool claims ahead again
    // once recent runs are short again.
    warm_up(&pool, echo).await;

    // A pause: what was claimed ahead goes back to the queue; the run goes
    // on; nothing starts until resumed.
    let (sleeper, ids) = claimed_ahead(&pool, store.as_ref(), echo, 4_000, 3).await;
    pool.pause();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ids
        .iter()
        .all(|id| store.get(id).unwrap().unwrap().state == TaskState::Queued)
    {
        assert!(Instant::now() < deadline, "the pause did not put them back");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(sleeper.wait().await.unwrap().state, TaskState::Succeeded);
    tokio::time::sleep(Duration::from_millis(100)).await;
    for id in &ids {
        let record = store.get(id).unwrap().unwrap();
        assert_eq!(record.state, TaskState::Queued);
        assert!(record.attempts.is_empty());
        assert_eq!(record.interruptions, 0);
    }
    pool.resume();
    each_ran_once(&pool, &ids, 0).await;
    pool.close().await.unwrap();
}

/// A host that dies leaves every task it claimed running under its lease.
/// When the store is opened again, the task that was running counts an
/// interruption, and ends at its most; those claimed ahead (no attempt
/// stored: their runs had not started) count one too, but are queued
/// again even at their most, and run. (The data directory is copied while
/// the pool runs, after the claims' flush: what a crash at that moment
/// leaves on disk.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_counts_a_claim_ahead_but_never_ends_the_task_by_it() {
    let (dir, store, pool, echo) = one_worker_warmed_up().await;
    let (sleeper, ids) = claimed_ahead(&pool, store.as_ref(), echo, 4_000, 3).await;
    for id in &ids {
        let record = store.get(id).unwrap().unwrap();
        assert_eq!(record.state, TaskState::Running);
        assert!(record.attempts.is_empty(), "{id}: {:?}", record.attempts);
        assert!(record.lease.is_some());
    }
    let running = store.get(&sleeper.id()).unwrap().unwrap();
    assert!(running.has_open_attempt());
    let crashed = tempfile::tempdir().unwrap();
    copy_live(dir.path(), crashed.path());
    sleeper.wait().await.unwrap();
    pool.close().await.unwrap();

    let store = open(crashed.path());
    let (backend, recovered) =
        wpool::backend::EmbeddedBackend::open_reporting(store.clone()).unwrap();
    assert_eq!(
        recovered,
        wpool::backend::Recovered {
            waiting: 0,
            requeued: 3,
            claimed_ahead: 3,
            ended: 1,
        }
    );
    // The sleeper was submitted with at most one interruption: it ended.
    let sleeper = store.get(&sleeper.id()).unwrap().unwrap();
    assert_eq!(sleeper.state, TaskState::Failed);
    assert_eq!(sleeper.outcome, Some(Outcome::Interrupted(1)));
    let pool = Pool::with_backend(config(1), Arc::new(backend)).unwrap();
    // The tasks claimed ahead, also at most one: counted, and run.
    each_ran_once(&pool, &ids, 1).await;
    pool.close().await.unwrap();
}

/// Copies a live data directory, its write-ahead log first: a checkpoint
/// during the copy can then only leave more in the copied database, never
/// less than the copied log needs.
fn copy_live(from: &Path, to: &Path) {
    copy_dir(&from.join("wal"), &to.join("wal"));
    copy_dir(from, to);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Without `claim_ahead` set: a pool over a durable sled store claims
/// ahead ([`wpool::DEFAULT_CLAIM_AHEAD`]); one over the memory store, where
/// no claim waits for a flush, does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_store_claims_ahead_by_default_and_the_memory_store_does_not() {
    let mut config = PoolConfig::new();
    config.workers(1);

    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let pool = Pool::with_store(config.clone(), store.clone()).unwrap();
    let echo = module(&pool, programs::P1_ECHO).await;
    warm_up(&pool, echo).await;
    let (sleeper, ids) = claimed_ahead(&pool, store.as_ref(), echo, 1_000, 3).await;
    sleeper.wait().await.unwrap();
    each_ran_once(&pool, &ids, 0).await;
    pool.close().await.unwrap();

    let memory = Arc::new(wpool::store::MemoryStore::new());
    let pool = Pool::with_store(config, memory.clone()).unwrap();
    let echo = module(&pool, programs::P1_ECHO).await;
    warm_up(&pool, echo).await;
    let sleep = module(&pool, programs::P1_SLEEP).await;
    let sleeper = pool
        .submit(TaskSpec::new(sleep, b"1000".to_vec()))
        .await
        .unwrap();
    while memory.get(&sleeper.id()).unwrap().unwrap().state != TaskState::Running {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut ids = Vec::new();
    for i in 0..3 {
        let spec = TaskSpec::new(echo, format!("{i}").into_bytes());
        ids.push(pool.submit(spec).await.unwrap().id());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        memory.get(&sleeper.id()).unwrap().unwrap().state,
        TaskState::Running,
        "the sleeper still runs"
    );
    for id in &ids {
        assert_eq!(
            memory.get(id).unwrap().unwrap().state,
            TaskState::Queued,
            "{id} was claimed before a worker was free"
        );
    }
    sleeper.wait().await.unwrap();
    each_ran_once(&pool, &ids, 0).await;
    pool.close().await.unwrap();
}

#[test]
fn claiming_too_far_ahead_is_refused_with_the_bound() {
    let mut config = PoolConfig::new();
    config.claim_ahead(wpool::MAX_CLAIM_AHEAD + 1);
    match Pool::new(config) {
        Err(wpool::Error::Config(message)) => {
            assert!(
                message.contains("`claim_ahead` must be at most 1024"),
                "{message}"
            );
        }
        other => panic!("expected a config error, got {:?}", other.map(|_| ())),
    }
}

/// `wpool serve --claim-ahead`: a daemon claiming ahead runs a burst of
/// short tasks, each once; past the bound it refuses to start, and says
/// why.
#[test]
fn the_daemon_claims_ahead_when_told_to() {
    let dir = tempfile::tempdir().unwrap();
    let server = crate::server::Server::start(
        &dir.path().join("data"),
        &["--workers", "1", "--claim-ahead", "64"],
    );
    let echo = server.upload(programs::P1_ECHO);
    let tasks: Vec<serde_json::Value> = (0..100)
        .map(|i| serde_json::json!({"module": echo, "input": i}))
        .collect();
    let (status, body) = server.post("/v1/tasks:batch", &serde_json::Value::Array(tasks));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["created"], 100, "{body}");
    let ids: Vec<String> = body["items"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"))
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 100);
    for (i, id) in ids.iter().enumerate() {
        let (status, result) = server.get(&format!("/v1/tasks/{id}/result?wait=60s"));
        assert_eq!(status, 200, "{result}");
        assert_eq!(result["state"], "succeeded", "{result}");
        assert_eq!(result["output"], i.to_string(), "{result}");
    }
    drop(server);

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wpool"))
        .args(["serve", "--claim-ahead", "5000", "--data-dir"])
        .arg(dir.path().join("other"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("`claim_ahead` must be at most 1024 (it is 5000)"),
        "{stderr}"
    );
}

/// What [`Hooked`] notes of an embedded backend over a durable sled
/// store, on one clock: when each run's end was written without its flush
/// (`complete_unflushed`), and when each flush the pool asked for began
/// and ended. Its flushes start 20 ms late, so that an end shown before
/// its flush would be seen well before that flush ends.
#[derive(Debug, Default)]
struct FlushWatched {
    clock: std::sync::atomic::AtomicU64,
    written: std::sync::Mutex<std::collections::HashMap<TaskId, u64>>,
    flushes: std::sync::Mutex<Vec<(u64, u64)>>,
}

impl FlushWatched {
    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1
    }
}

#[async_trait::async_trait]
impl Hooks for FlushWatched {
    fn completed_unflushed(
        &self,
        lease: &wpool::Lease,
        answer: wpool::Result<Completed>,
    ) -> wpool::Result<Completed> {
        if let Ok(Completed::Recorded(_)) = &answer {
            let at = self.tick();
            self.written.lock().unwrap().insert(lease.task, at);
        }
        answer
    }

    async fn flush(&self, inner: &EmbeddedBackend) -> wpool::Result<()> {
        let began = self.tick();
        tokio::time::sleep(Duration::from_millis(20)).await;
        inner.flush().await?;
        let ended = self.tick();
        self.flushes.lock().unwrap().push((began, ended));
        Ok(())
    }
}

/// While tasks claimed ahead wait, a worker goes on to the next without
/// waiting for the flush of its last run's end, and that end is shown
/// later: no waiter gets a result before a flush that began after the end
/// was written has ended. Most runs of a burst take that way; every
/// result is there after the store is opened again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_end_left_to_a_later_flush_is_shown_only_once_that_flush_ended() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Arc::new(Hooked {
        inner: EmbeddedBackend::open(open(dir.path())).unwrap(),
        hooks: FlushWatched::default(),
    });
    let pool = Pool::with_backend(config(1), backend.clone()).unwrap();
    let echo = module(&pool, programs::P1_ECHO).await;
    warm_up(&pool, echo).await;
    let specs = (0..300).map(|i| TaskSpec::new(echo, i.to_string().into_bytes()));
    let handles = pool.submit_many(specs).await.unwrap();
    let waits: Vec<_> = handles
        .into_iter()
        .map(|handle| {
            let backend = backend.clone();
            let handle = handle.unwrap();
            tokio::spawn(async move {
                let result = handle.wait().await.unwrap();
                (handle.id(), result, backend.hooks.tick())
            })
        })
        .collect();
    let mut ids = Vec::new();
    let mut deferred = 0;
    for (i, waiting) in waits.into_iter().enumerate() {
        let (id, result, seen) = waiting.await.unwrap();
        assert_eq!(result.state, TaskState::Succeeded);
        assert_eq!(result.output, i.to_string().as_bytes());
        ids.push(id);
        let Some(&written) = backend.hooks.written.lock().unwrap().get(&id) else {
            continue;
        };
        deferred += 1;
        let flushes = backend.hooks.flushes.lock().unwrap();
        assert!(
            flushes
                .iter()
                .any(|&(began, ended)| began > written && ended < seen),
            "task {i}'s end, written at {written}, was seen at {seen}, and no flush \
             between them covers it: {:?}",
            flushes.iter().rev().take(4).collect::<Vec<_>>()
        );
    }
    assert!(
        deferred >= 100,
        "only {deferred} of 300 runs left their end to a later flush"
    );
    pool.close().await.unwrap();
    drop(pool);
    drop(backend);

    let pool = Pool::with_store(config(1), open(dir.path())).unwrap();
    for (i, id) in ids.iter().enumerate() {
        let result = pool
            .result(*id)
            .await
            .unwrap()
            .expect("a result shown is kept");
        assert_eq!(result.output, i.to_string().as_bytes());
    }
    pool.close().await.unwrap();
}

/// Makes a [`Hooked`] backend lose the answer of the next run's end
/// written without its flush, once it is written, as a connection cut off
/// after its commit would.
#[derive(Debug, Default)]
struct UnflushedAnswerLost {
    armed: std::sync::atomic::AtomicBool,
    lost: std::sync::Mutex<Option<TaskId>>,
}

impl Hooks for UnflushedAnswerLost {
    fn completed_unflushed(
        &self,
        lease: &wpool::Lease,
        answer: wpool::Result<Completed>,
    ) -> wpool::Result<Completed> {
        let answer = answer?;
        if self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            *self.lost.lock().unwrap() = Some(lease.task);
            return Err(wpool::Error::Unavailable(
                "the connection broke before the answer came back".into(),
            ));
        }
        Ok(answer)
    }
}

/// A run's end written without its flush, whose answer was lost after it
/// was written, is tried again the usual way, refused (the run no longer
/// holds its lease), and recognised in the task's history as this run's:
/// its waiter gets the result and the pool counts the task, rather than
/// dropping the result as a lost lease's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_end_written_without_its_flush_whose_answer_was_lost_is_recognised() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Arc::new(Hooked {
        inner: EmbeddedBackend::open(open(dir.path())).unwrap(),
        hooks: UnflushedAnswerLost::default(),
    });
    let pool = Pool::with_backend(config(1), backend.clone()).unwrap();
    let echo = module(&pool, programs::P1_ECHO).await;
    warm_up(&pool, echo).await;
    let before = pool.stats().await.unwrap().finished;
    backend
        .hooks
        .armed
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let specs = (0..200).map(|i| TaskSpec::new(echo, i.to_string().into_bytes()));
    let handles = pool.submit_many(specs).await.unwrap();
    for (i, handle) in handles.into_iter().enumerate() {
        let result = tokio::time::timeout(Duration::from_secs(20), handle.unwrap().wait())
            .await
            .expect("a waiter was never told of its result")
            .unwrap();
        assert_eq!(result.state, TaskState::Succeeded);
        assert_eq!(result.output, i.to_string().as_bytes());
        assert_eq!((result.attempts.len(), result.interruptions), (1, 0));
    }
    assert!(
        backend.hooks.lost.lock().unwrap().is_some(),
        "no run's end was written without its flush"
    );
    // A waiter may read a final record from the store before the pool is
    // through with the lost answer and counts the task: wait for that.
    let deadline = Instant::now() + Duration::from_secs(20);
    while pool.stats().await.unwrap().finished < before + 200 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(pool.stats().await.unwrap().finished, before + 200);
    pool.close().await.unwrap();
}
