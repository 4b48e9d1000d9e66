//! The pool: scheduling, retries, cancel, idempotency, shutdown, events,
//! stats, concurrency.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use wpool::store::{MemoryStore, Store, TaskFilter};
use wpool::{
    Backoff, CancelResult, Error, EventKind, LimitOverrides, ModuleHash, Outcome, Pool, PoolConfig,
    TaskSpec, TaskState,
};
use wpool_test_artifacts as programs;

use crate::util::{Hooked, Hooks, read};

fn config(workers: usize) -> PoolConfig {
    let mut config = PoolConfig::new();
    config.workers(workers);
    config
}

fn pool(workers: usize) -> Pool {
    Pool::new(config(workers)).unwrap()
}

async fn module(pool: &Pool, path: &str) -> ModuleHash {
    pool.register(&read(path)).await.unwrap()
}

fn fast_backoff() -> Backoff {
    Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_secs(1),
        multiplier: 2.0,
        jitter: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_and_wait_for_the_result() {
    let pool = pool(2);
    let echo = module(&pool, programs::P1_ECHO).await;
    let handle = pool
        .submit(TaskSpec::new(echo, b"hello".to_vec()).label("team", "a"))
        .await
        .unwrap();
    let result = handle.wait().await.unwrap();
    assert_eq!(result.state, TaskState::Succeeded);
    assert_eq!(result.outcome, Some(Outcome::Success));
    assert_eq!(result.output, b"hello");
    assert_eq!(result.attempts.len(), 1);
    assert!(result.fuel_consumed.unwrap() > 0);
    assert!(result.finished_at >= result.submitted_at);
    let status = pool.status(handle.id()).await.unwrap();
    assert_eq!(status.labels.get("team").map(String::as_str), Some("a"));
    assert_eq!(pool.result(handle.id()).await.unwrap().unwrap(), result);

    // Submitting the bytes works too, and registers the module once.
    let compiled = pool.executor().compilations();
    let result = pool
        .submit(TaskSpec::new(
            wpool::ModuleRef::Bytes(read(programs::P1_ECHO)),
            b"again".to_vec(),
        ))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(result.output, b"again");
    assert_eq!(pool.executor().compilations(), compiled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_specs_are_refused_with_a_reason() {
    let pool = pool(1);
    let echo = module(&pool, programs::P1_ECHO).await;
    let unknown: ModuleHash = "00".repeat(32).parse().unwrap();
    let cases: Vec<(TaskSpec, &str)> = vec![
        (TaskSpec::new(unknown, Vec::new()), "unknown module"),
        (
            TaskSpec::new(wpool::ModuleRef::Bytes(b"nope".to_vec()), Vec::new()),
            "not a WebAssembly binary",
        ),
        (
            TaskSpec::new(echo, Vec::new()).max_attempts(0),
            "max attempts",
        ),
        (
            TaskSpec::new(echo, Vec::new()).timeout(Duration::ZERO),
            "timeout",
        ),
        (
            TaskSpec::new(echo, Vec::new()).limits(LimitOverrides {
                memory: Some(1 << 40),
                ..Default::default()
            }),
            "memory",
        ),
        (
            TaskSpec::new(echo, Vec::new()).idempotency_key(""),
            "idempotency key",
        ),
        (TaskSpec::new(echo, Vec::new()).label("", "x"), "label"),
    ];
    for (spec, expected) in cases {
        let err = pool.submit(spec).await.unwrap_err().to_string();
        assert!(err.contains(expected), "{expected}: {err}");
    }
    // Nothing was stored by the refused submissions.
    assert_eq!(pool.stats().await.unwrap().total, 0);
}

/// Submits a sleeper that keeps the only worker busy, so that what is
/// submitted next waits in the queue.
/// The pool's busy workers, looked at every 10 ms until they are `busy`
/// (at most `tries` times): the last count seen.
async fn busy_once(pool: &Pool, busy: usize, tries: usize) -> usize {
    let mut seen = 0;
    for _ in 0..tries {
        seen = pool.stats().await.unwrap().busy;
        if seen == busy {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    seen
}

async fn occupy(pool: &Pool, ms: u64) -> wpool::TaskHandle {
    let sleep = module(pool, programs::P1_SLEEP).await;
    let handle = pool
        .submit(TaskSpec::new(sleep, ms.to_string().into_bytes()))
        .await
        .unwrap();
    while pool.status(handle.id()).await.unwrap().state != TaskState::Running {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    handle
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_first_then_fifo() {
    let pool = pool(1);
    let echo = module(&pool, programs::P1_ECHO).await;
    let mut events = pool.subscribe();
    let blocker = occupy(&pool, 300).await;
    let mut names = HashMap::new();
    for (i, priority) in [1, 5, 3, 5, 0, 3, 5].into_iter().enumerate() {
        let name = format!("p{priority}-{i}");
        let handle = pool
            .submit(TaskSpec::new(echo, name.clone().into_bytes()).priority(priority))
            .await
            .unwrap();
        names.insert(handle.id(), name);
    }
    blocker.wait().await.unwrap();
    let mut started = Vec::new();
    while started.len() < names.len() {
        let event = events.recv().await.unwrap();
        if let EventKind::Started { .. } = event.kind
            && let Some(name) = names.get(&event.id)
        {
            started.push(name.clone());
        }
    }
    assert_eq!(
        started,
        ["p5-1", "p5-3", "p5-6", "p3-2", "p3-5", "p1-0", "p0-4"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_task_starts_at_its_time() {
    let pool = pool(1);
    let echo = module(&pool, programs::P1_ECHO).await;
    let handle = pool
        .submit(TaskSpec::new(echo, b"later".to_vec()).delay(Duration::from_millis(400)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        pool.status(handle.id()).await.unwrap().state,
        TaskState::Scheduled
    );
    let result = handle.wait().await.unwrap();
    assert_eq!(result.output, b"later");
    let waited = result.started_at.unwrap() - result.submitted_at;
    assert!(waited >= 400, "started after {waited} ms");
    assert!(waited < 2_000, "started after {waited} ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_not_started_before_its_expiry_expires() {
    let pool = pool(1);
    let echo = module(&pool, programs::P1_ECHO).await;
    let mut events = pool.subscribe();
    let blocker = occupy(&pool, 400).await;
    let doomed = pool
        .submit(TaskSpec::new(echo, b"too late".to_vec()).expire_after(Duration::from_millis(100)))
        .await
        .unwrap();
    let fine = pool
        .submit(TaskSpec::new(echo, b"in time".to_vec()).expire_after(Duration::from_secs(60)))
        .await
        .unwrap();
    let result = doomed.wait().await.unwrap();
    assert_eq!(result.state, TaskState::Expired);
    assert_eq!(result.outcome, None);
    assert!(result.attempts.is_empty(), "it never ran");
    // Expired at its time, while the worker was still busy.
    assert_eq!(
        pool.status(blocker.id()).await.unwrap().state,
        TaskState::Running
    );
    assert_eq!(fine.wait().await.unwrap().output, b"in time");
    let mut saw_expired = false;
    while let Ok(Some(event)) = events.try_recv() {
        if event.id == doomed.id() {
            assert!(!matches!(event.kind, EventKind::Started { .. }));
            saw_expired |= event.kind == EventKind::Expired;
        }
    }
    assert!(saw_expired);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_retried_with_backoff() {
    let pool = pool(1);
    let flaky = module(&pool, programs::P1_FLAKY).await;
    let mut events = pool.subscribe();
    let handle = pool
        .submit(
            TaskSpec::new(flaky, b"3".to_vec())
                .max_attempts(5)
                .backoff(fast_backoff()),
        )
        .await
        .unwrap();
    let result = handle.wait().await.unwrap();
    assert_eq!(result.state, TaskState::Succeeded);
    assert_eq!(result.output, b"succeeded on attempt 3");
    let outcomes: Vec<_> = result
        .attempts
        .iter()
        .map(|a| a.outcome.clone().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        [Outcome::Exit(1), Outcome::Exit(1), Outcome::Success]
    );
    let starts: Vec<u64> = result.attempts.iter().map(|a| a.started_at).collect();
    assert!(starts[1] - starts[0] >= 50, "first backoff {:?}", starts);
    assert!(
        starts[2] - starts[1] >= 100,
        "second backoff grows {:?}",
        starts
    );

    let mut kinds = Vec::new();
    while let Ok(Some(event)) = events.try_recv() {
        if event.id == handle.id() {
            // A run's start and end carry the times the record holds.
            match event.kind {
                EventKind::Started { attempt } => assert_eq!(
                    event.at,
                    result.attempts[attempt as usize - 1].started_at,
                    "start of attempt {attempt}"
                ),
                EventKind::Succeeded => assert_eq!(event.at, result.finished_at),
                _ => {}
            }
            kinds.push(match event.kind {
                EventKind::Submitted => "submitted".to_string(),
                EventKind::Started { attempt } => format!("started {attempt}"),
                EventKind::Retrying { attempt, .. } => format!("retrying after {attempt}"),
                EventKind::Succeeded => "succeeded".to_string(),
                other => format!("{other:?}"),
            });
        }
    }
    assert_eq!(
        kinds,
        [
            "submitted",
            "started 1",
            "retrying after 1",
            "started 2",
            "retrying after 2",
            "started 3",
            "succeeded"
        ]
    );

    // Out of attempts: failed, with every attempt in the history.
    let result = pool
        .submit(
            TaskSpec::new(flaky, b"10".to_vec())
                .max_attempts(3)
                .backoff(fast_backoff()),
        )
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(result.state, TaskState::Failed);
    assert_eq!(result.outcome, Some(Outcome::Exit(1)));
    assert_eq!(result.attempts.len(), 3);
    assert_eq!(result.log, "failing on attempt 3 of 10\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_that_cannot_change_are_not_retried() {
    let pool = pool(1);
    let flood = module(&pool, programs::P1_OUTPUT_FLOOD).await;
    let result = pool
        .submit(
            TaskSpec::new(flood, Vec::new())
                .max_attempts(3)
                .backoff(fast_backoff())
                .limits(LimitOverrides {
                    max_output: Some(1024),
                    ..Default::default()
                }),
        )
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(result.outcome, Some(Outcome::OutputTooLarge));
    assert_eq!(result.attempts.len(), 1);

    let spin = module(&pool, programs::P1_SPIN).await;
    let handle = pool
        .submit(
            TaskSpec::new(spin, Vec::new())
                .max_attempts(3)
                .backoff(fast_backoff()),
        )
        .await
        .unwrap();
    while pool.status(handle.id()).await.unwrap().state != TaskState::Running {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(handle.cancel().await.unwrap(), CancelResult::Killed);
    let result = handle.wait().await.unwrap();
    assert_eq!(result.state, TaskState::Cancelled);
    assert_eq!(result.attempts.len(), 1, "a cancel is not retried");

    // A timeout can change on retry: it is retried.
    let result = pool
        .submit(
            TaskSpec::new(spin, Vec::new())
                .max_attempts(2)
                .backoff(fast_backoff())
                .timeout(Duration::from_millis(50)),
        )
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(result.outcome, Some(Outcome::Timeout));
    assert_eq!(result.attempts.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_returns_the_existing_task() {
    let pool = pool(1);
    let echo = module(&pool, programs::P1_ECHO).await;
    let first = pool
        .submit(TaskSpec::new(echo, b"once".to_vec()).idempotency_key("order-42"))
        .await
        .unwrap();
    let second = pool
        .submit(TaskSpec::new(echo, b"twice".to_vec()).idempotency_key("order-42"))
        .await
        .unwrap();
    assert_eq!(first.id(), second.id());
    assert_eq!(second.wait().await.unwrap().output, b"once");
    assert_eq!(pool.stats().await.unwrap().total, 1);
    let third = pool
        .submit(TaskSpec::new(echo, b"other".to_vec()).idempotency_key("order-43"))
        .await
        .unwrap();
    assert_ne!(third.id(), first.id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_in_every_state() {
    let pool = pool(1);
    let echo = module(&pool, programs::P1_ECHO).await;
    let sleep = module(&pool, programs::P1_SLEEP).await;

    let done = pool
        .submit(TaskSpec::new(echo, b"x".to_vec()))
        .await
        .unwrap();
    done.wait().await.unwrap();
    assert_eq!(
        done.cancel().await.unwrap(),
        CancelResult::AlreadyFinished(TaskState::Succeeded)
    );

    let running = pool.submit(TaskSpec::new(sleep, Vec::new())).await.unwrap();
    while pool.status(running.id()).await.unwrap().state != TaskState::Running {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let queued = pool
        .submit(TaskSpec::new(echo, b"q".to_vec()))
        .await
        .unwrap();
    let scheduled = pool
        .submit(TaskSpec::new(echo, b"s".to_vec()).delay(Duration::from_secs(3600)))
        .await
        .unwrap();
    assert_eq!(
        pool.status(queued.id()).await.unwrap().state,
        TaskState::Queued
    );
    assert_eq!(
        pool.status(scheduled.id()).await.unwrap().state,
        TaskState::Scheduled
    );

    assert_eq!(queued.cancel().await.unwrap(), CancelResult::Cancelled);
    assert_eq!(scheduled.cancel().await.unwrap(), CancelResult::Cancelled);
    assert_eq!(running.cancel().await.unwrap(), CancelResult::Killed);
    for handle in [&queued, &scheduled, &running] {
        let result = handle.wait().await.unwrap();
        assert_eq!(result.state, TaskState::Cancelled);
        assert_eq!(result.outcome, Some(Outcome::Cancelled));
    }
    assert!(
        pool.result(queued.id())
            .await
            .unwrap()
            .unwrap()
            .attempts
            .is_empty(),
        "never ran"
    );
    assert_eq!(
        pool.result(running.id())
            .await
            .unwrap()
            .unwrap()
            .attempts
            .len(),
        1
    );
    assert_eq!(
        queued.cancel().await.unwrap(),
        CancelResult::AlreadyFinished(TaskState::Cancelled)
    );

    let unknown = wpool::TaskId::new();
    assert!(matches!(pool.cancel(unknown).await, Err(Error::NotFound(id)) if id == unknown));
    // The pool is unharmed.
    let result = pool
        .submit(TaskSpec::new(echo, b"ok".to_vec()))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(result.output, b"ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_keeps_the_queue_and_a_new_pool_resumes_it() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let pool = Pool::with_store(config(1), store.clone()).unwrap();
    let echo = module(&pool, programs::P1_ECHO).await;
    let spin = module(&pool, programs::P1_SPIN).await;
    let spinner = pool
        .submit(
            TaskSpec::new(spin, Vec::new())
                .max_attempts(2)
                .timeout(Duration::from_secs(1)),
        )
        .await
        .unwrap();
    while pool.status(spinner.id()).await.unwrap().state != TaskState::Running {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut queued = Vec::new();
    for i in 0..5 {
        queued.push(
            pool.submit(TaskSpec::new(echo, format!("{i}").into_bytes()))
                .await
                .unwrap()
                .id(),
        );
    }
    let later = pool
        .submit(TaskSpec::new(echo, b"later".to_vec()).delay(Duration::from_millis(300)))
        .await
        .unwrap()
        .id();
    pool.stop_with_grace(Duration::from_millis(100))
        .await
        .unwrap();
    pool.stop().await.unwrap(); // idempotent
    assert!(matches!(
        pool.submit(TaskSpec::new(echo, Vec::new())).await,
        Err(Error::ShutDown)
    ));

    // The spinner was killed after the grace period and put back in the
    // queue, not counted as an attempt nor as an interruption (the stop was
    // graceful); nothing else ran.
    let spinner_record = store.get(&spinner.id()).unwrap().unwrap();
    assert_eq!(spinner_record.state, TaskState::Queued);
    assert!(spinner_record.attempts.is_empty());
    assert_eq!(spinner_record.interruptions, 0);
    assert_eq!(spinner_record.lease, None);
    for id in &queued {
        assert_eq!(store.get(id).unwrap().unwrap().state, TaskState::Queued);
    }
    assert_eq!(
        store.get(&later).unwrap().unwrap().state,
        TaskState::Scheduled
    );
    drop(pool);

    let pool = Pool::with_store(config(1), store.clone()).unwrap();
    // The spinner was first in line: it runs again, both its attempts,
    // each until its timeout; the run the stop killed is not one of them.
    let spun = pool.wait(spinner.id()).await.unwrap();
    assert_eq!(spun.state, TaskState::Failed);
    assert_eq!(spun.outcome, Some(Outcome::Timeout));
    assert_eq!(spun.attempts.len(), 2);
    assert!(
        spun.attempts
            .iter()
            .all(|a| a.outcome == Some(Outcome::Timeout))
    );
    assert_eq!(spun.interruptions, 0);
    for (i, id) in queued.iter().enumerate() {
        assert_eq!(
            pool.wait(*id).await.unwrap().output,
            format!("{i}").into_bytes()
        );
    }
    assert_eq!(pool.wait(later).await.unwrap().output, b"later");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_drains_everything_then_refuses_work() {
    let pool = pool(2);
    let echo = module(&pool, programs::P1_ECHO).await;
    let mut ids = Vec::new();
    for i in 0..50 {
        let mut spec = TaskSpec::new(echo, format!("{i}").into_bytes());
        if i % 10 == 0 {
            spec = spec.delay(Duration::from_millis(200));
        }
        ids.push(pool.submit(spec).await.unwrap().id());
    }
    pool.close().await.unwrap();
    for id in &ids {
        assert_eq!(pool.status(*id).await.unwrap().state, TaskState::Succeeded);
    }
    assert!(matches!(
        pool.submit(TaskSpec::new(echo, Vec::new())).await,
        Err(Error::ShutDown)
    ));
    pool.close().await.unwrap();
    pool.stop().await.unwrap();
}

/// A pool of one worker, busy for `busy_ms`, whose queue of `max_queued`
/// is full of echo tasks (inputs "1", "2", ...); with the echo module and
/// the busy task.
async fn full_queue(max_queued: usize, busy_ms: u64) -> (Pool, ModuleHash, wpool::TaskHandle) {
    let mut config = config(1);
    config.max_queued(max_queued);
    let pool = Pool::new(config).unwrap();
    let echo = module(&pool, programs::P1_ECHO).await;
    let blocker = occupy(&pool, busy_ms).await;
    for i in 1..=max_queued {
        pool.try_submit(TaskSpec::new(echo, i.to_string().into_bytes()))
            .await
            .unwrap();
    }
    (pool, echo, blocker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_pushes_back() {
    let (pool, echo, blocker) = full_queue(2, 300).await;
    let full = pool
        .try_submit(TaskSpec::new(echo, b"3".to_vec()))
        .await
        .unwrap_err();
    assert!(matches!(full, Error::QueueFull(2)), "{full}");
    assert!(full.to_string().contains("queue is full"));
    // `submit` waits for room instead, and gets it when the queue moves.
    let waiting = pool.submit(TaskSpec::new(echo, b"3".to_vec()));
    let handle = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        pool.status(blocker.id()).await.unwrap().state,
        TaskState::Succeeded
    );
    assert_eq!(handle.wait().await.unwrap().output, b"3");
}

/// A submitter waiting for room in a full queue is answered when the pool
/// stops (its queue then never moves), not left waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submitter_waiting_for_room_is_answered_at_stop() {
    let (pool, echo, _blocker) = full_queue(1, 60_000).await;
    let waiting = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.submit(TaskSpec::new(echo, b"2".to_vec())).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished(), "the queue is full: submit waits");
    pool.stop_with_grace(Duration::ZERO).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("a submitter waiting for room was left waiting at stop")
        .unwrap();
    assert!(matches!(answer, Err(Error::ShutDown)), "{answer:?}");
}

/// A batch goes in whole or not at all for want of room, and each of its
/// tasks says whether the call created it or a key named an existing one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_takes_room_for_all_or_none_and_reports_each_task() {
    let mut config = config(1);
    config.max_queued(4);
    let pool = Pool::new(config).unwrap();
    let echo = module(&pool, programs::P1_ECHO).await;
    let blocker = occupy(&pool, 2000).await;
    let answers = pool
        .try_submit_many([
            TaskSpec::new(echo, b"a".to_vec()).idempotency_key("k"),
            TaskSpec::new(echo, b"b".to_vec()).idempotency_key("k"),
            TaskSpec::new(echo, b"x".to_vec()).max_attempts(0),
            TaskSpec::new(echo, b"c".to_vec()),
        ])
        .await
        .unwrap();
    assert_eq!(answers.len(), 4);
    let first = answers[0].as_ref().unwrap();
    assert!(first.created);
    let again = answers[1].as_ref().unwrap();
    assert!(!again.created, "the key, given twice, names the first");
    assert_eq!(again.handle.id(), first.handle.id());
    assert!(matches!(answers[2], Err(Error::InvalidTask(_))));
    assert!(answers[3].as_ref().unwrap().created);
    // Two wait; the refused and the repeated ones took no room. Three
    // more do not fit in 4: none goes in.
    let specs = |n: usize| (0..n).map(|_| TaskSpec::new(echo, b"d".to_vec()));
    let full = pool.try_submit_many(specs(3)).await.unwrap_err();
    assert!(matches!(full, Error::QueueFull(4)), "{full}");
    assert_eq!(pool.stats().await.unwrap().total, 3, "nothing of it stored");
    assert_eq!(pool.try_submit_many(specs(2)).await.unwrap().len(), 2);
    assert_eq!(pool.stats().await.unwrap().total, 5);
    // `submit_many` waits for room instead.
    let waited = tokio::time::timeout(Duration::from_secs(10), pool.submit_many(specs(2)))
        .await
        .unwrap()
        .unwrap();
    assert!(waited.iter().all(Result::is_ok));
    assert_eq!(
        blocker.wait().await.unwrap().outcome,
        Some(Outcome::Success),
        "the blocker finished, making room"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_can_be_added_while_running() {
    let mut config = config(1);
    config.engine_mut().max_workers(4);
    let pool = Pool::new(config).unwrap();
    let sleep = module(&pool, programs::P1_SLEEP).await;
    let handles: Vec<_> = futures_join(&pool, sleep, 4).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(pool.stats().await.unwrap().busy, 1);
    pool.set_workers(4).unwrap();
    assert_eq!(busy_once(&pool, 4, 100).await, 4);
    assert!(pool.set_workers(5).is_err());
    pool.set_workers(1).unwrap();
    for handle in handles {
        assert_eq!(handle.wait().await.unwrap().state, TaskState::Succeeded);
    }
}

/// Fewer workers take effect as the runs above the new count end, even
/// though a worker claims its next task with the end of its run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fewer_workers_take_effect_as_runs_end() {
    let pool = pool(3);
    let sleep = module(&pool, programs::P1_SLEEP).await;
    let mut handles = Vec::new();
    // Four seconds of work for three workers.
    for _ in 0..120 {
        handles.push(
            pool.submit(TaskSpec::new(sleep, b"100".to_vec()))
                .await
                .unwrap(),
        );
    }
    assert_eq!(busy_once(&pool, 3, 200).await, 3);
    pool.set_workers(1).unwrap();
    // The runs under way end within 100 ms; from then on one at a time,
    // while tasks still wait.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while pool.stats().await.unwrap().busy > 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "still more than one busy worker 2 s after the count went to 1"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..20 {
        let stats = pool.stats().await.unwrap();
        assert!(stats.busy <= 1, "{} busy with 1 worker", stats.busy);
        assert!(stats.counts.get(TaskState::Queued) > 0, "the queue ran dry");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pool.set_workers(3).unwrap();
    for handle in handles {
        assert_eq!(handle.wait().await.unwrap().state, TaskState::Succeeded);
    }
}

async fn futures_join(pool: &Pool, sleep: ModuleHash, n: usize) -> Vec<wpool::TaskHandle> {
    let mut handles = Vec::new();
    for _ in 0..n {
        handles.push(
            pool.submit(TaskSpec::new(sleep, b"800".to_vec()))
                .await
                .unwrap(),
        );
    }
    handles
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_reaches_subscribers() {
    let pool = pool(1);
    let progress = module(&pool, programs::P1_PROGRESS).await;
    let mut events = pool.subscribe();
    let handle = pool
        .submit(TaskSpec::new(progress, Vec::new()))
        .await
        .unwrap();
    handle.wait().await.unwrap();
    let mut seen = Vec::new();
    while let Ok(Some(event)) = events.try_recv() {
        if let EventKind::Progress { done, total } = event.kind {
            seen.push((done, total));
        }
    }
    assert_eq!(seen, [(1, 4), (2, 4), (3, 4), (4, 4)]);
}

/// A worker runs the tasks it claims one after another, with one
/// progress callback for all of them: each report is its own task's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_of_tasks_run_in_a_row_is_each_tasks_own() {
    let pool = pool(1);
    let progress = module(&pool, programs::P1_PROGRESS).await;
    let mut events = pool.subscribe();
    let specs = (0..4).map(|_| TaskSpec::new(progress, Vec::new()));
    let handles: Vec<_> = (pool.submit_many(specs).await.unwrap())
        .into_iter()
        .map(Result::unwrap)
        .collect();
    for handle in &handles {
        handle.wait().await.unwrap();
    }
    let mut seen: BTreeMap<wpool::TaskId, Vec<(u64, u64)>> = BTreeMap::new();
    while let Ok(Some(event)) = events.try_recv() {
        if let EventKind::Progress { done, total } = event.kind {
            seen.entry(event.id).or_default().push((done, total));
        }
    }
    assert_eq!(seen.len(), handles.len(), "{seen:?}");
    for handle in &handles {
        assert_eq!(
            seen.get(&handle.id()).map(Vec::as_slice),
            Some(&[(1, 4), (2, 4), (3, 4), (4, 4)][..]),
            "{}",
            handle.id()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_and_pages_newest_first() {
    let pool = pool(2);
    let echo = module(&pool, programs::P1_ECHO).await;
    let mut ids = Vec::new();
    for i in 0..25 {
        let team = if i % 2 == 0 { "even" } else { "odd" };
        ids.push(
            pool.submit(TaskSpec::new(echo, Vec::new()).label("team", team))
                .await
                .unwrap(),
        );
    }
    for handle in &ids {
        handle.wait().await.unwrap();
    }
    let mut labels = BTreeMap::new();
    labels.insert("team".to_string(), "even".to_string());
    let mut seen = Vec::new();
    let mut filter = TaskFilter {
        labels,
        limit: 5,
        state: Some(TaskState::Succeeded),
        ..Default::default()
    };
    loop {
        let page = pool.list(&filter).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 5);
        filter.before = Some(page.last().unwrap().id);
        seen.extend(page.into_iter().map(|t| t.id));
    }
    let expected: Vec<_> = ids.iter().step_by(2).rev().map(|h| h.id()).collect();
    assert_eq!(seen, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_old_results() {
    let mut config = config(2);
    config.retention(Duration::from_millis(200));
    let pool = Pool::new(config).unwrap();
    let echo = module(&pool, programs::P1_ECHO).await;
    let handle = pool.submit(TaskSpec::new(echo, Vec::new())).await.unwrap();
    handle.wait().await.unwrap();
    let mut gone = false;
    for _ in 0..100 {
        if matches!(pool.status(handle.id()).await, Err(Error::NotFound(_))) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gone, "the result outlived its retention");
    assert_eq!(pool.stats().await.unwrap().total, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_can_collect_unused_modules() {
    let mut config = config(1);
    config
        .retention(Duration::from_millis(200))
        .gc_modules(true);
    let pool = Pool::new(config).unwrap();
    let echo = module(&pool, programs::P1_ECHO).await;
    assert_eq!(pool.modules().await.unwrap().len(), 1);
    pool.submit(TaskSpec::new(echo, Vec::new()))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    let mut collected = false;
    for _ in 0..100 {
        if pool.modules().await.unwrap().is_empty() {
            collected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(collected, "the unused module was kept");
    // Submitting the bytes brings it back.
    let result = pool
        .submit(TaskSpec::new(
            wpool::ModuleRef::Bytes(read(programs::P1_ECHO)),
            b"back".to_vec(),
        ))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(result.output, b"back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_add_up_after_a_mixed_run() {
    let pool = pool(2);
    let echo = module(&pool, programs::P1_ECHO).await;
    let flaky = module(&pool, programs::P1_FLAKY).await;
    let sleep = module(&pool, programs::P1_SLEEP).await;
    let mut handles = Vec::new();
    for i in 0..3000u32 {
        let spec = match i % 6 {
            0..=2 => TaskSpec::new(echo, i.to_string().into_bytes()),
            3 => TaskSpec::new(flaky, b"2".to_vec()).max_attempts(1),
            4 => TaskSpec::new(echo, Vec::new()).delay(Duration::from_secs(3600)),
            _ => TaskSpec::new(sleep, b"1".to_vec()).expire_after(Duration::from_millis(1)),
        };
        handles.push((i, pool.submit(spec).await.unwrap()));
    }
    let mut cancelled = 0;
    for (i, handle) in &handles {
        if i % 6 == 4 {
            assert_eq!(handle.cancel().await.unwrap(), CancelResult::Cancelled);
            cancelled += 1;
        }
    }
    let mut by_state: HashMap<TaskState, u64> = HashMap::new();
    for (_, handle) in &handles {
        *by_state
            .entry(handle.wait().await.unwrap().state)
            .or_default() += 1;
    }
    let stats = pool.stats().await.unwrap();
    assert_eq!(stats.total, 3000);
    assert_eq!(stats.counts.total(), 3000);
    for state in TaskState::ALL {
        assert_eq!(
            stats.counts.get(state),
            by_state.get(&state).copied().unwrap_or(0),
            "{state}"
        );
    }
    assert_eq!(stats.counts.get(TaskState::Cancelled), cancelled);
    assert_eq!(stats.counts.get(TaskState::Failed), 500);
    assert!(stats.counts.get(TaskState::Succeeded) >= 1500);
    assert_eq!(
        stats.counts.get(TaskState::Succeeded) + stats.counts.get(TaskState::Expired),
        2000
    );
    assert_eq!(stats.busy, 0);
}

#[test]
fn many_threads_submit_and_cancel_and_nothing_is_lost() {
    let pool = pool(2);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let echo = runtime.block_on(module(&pool, programs::P1_ECHO));
    let sleep = runtime.block_on(module(&pool, programs::P1_SLEEP));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let pool = pool.clone();
            let handle = runtime.handle().clone();
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                for i in 0..500u32 {
                    let spec = if i % 5 == 0 {
                        TaskSpec::new(sleep, b"2".to_vec())
                    } else {
                        TaskSpec::new(echo, format!("{t}-{i}").into_bytes())
                    };
                    let task = handle.block_on(pool.submit(spec)).unwrap();
                    if i % 3 == 0 {
                        let _ = handle.block_on(task.cancel()).unwrap();
                    }
                    mine.push(task.id());
                }
                mine
            })
        })
        .collect();
    let ids: Vec<_> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert_eq!(ids.len(), 2000);
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        2000,
        "ids are unique"
    );
    let mut finals = HashMap::new();
    for id in &ids {
        let result = runtime.block_on(pool.wait(*id)).unwrap();
        assert!(result.state.is_final());
        *finals.entry(result.state).or_insert(0u64) += 1;
        let runs = result.attempts.len();
        assert!(runs <= 1, "ran {runs} times");
        if result.state == TaskState::Succeeded {
            assert_eq!(runs, 1);
        }
    }
    let stats = runtime.block_on(pool.stats()).unwrap();
    assert_eq!(stats.total, 2000);
    for (state, n) in finals {
        assert_eq!(stats.counts.get(state), n, "{state}");
    }
    assert_eq!(
        stats.counts.get(TaskState::Succeeded) + stats.counts.get(TaskState::Cancelled),
        2000
    );
}

/// Makes the next completion of a [`Hooked`] backend commit and then fail
/// as if the connection broke before its answer came back.
#[derive(Debug)]
struct AnswerLost {
    lose_next: std::sync::atomic::AtomicBool,
}

impl Hooks for AnswerLost {
    fn completed(
        &self,
        _lease: &wpool::Lease,
        answer: wpool::Result<(wpool::backend::Completed, wpool::backend::Claim)>,
    ) -> wpool::Result<(wpool::backend::Completed, wpool::backend::Claim)> {
        let answer = answer?;
        if self
            .lose_next
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            return Err(Error::Unavailable(
                "the connection broke before the commit's answer came back".into(),
            ));
        }
        Ok(answer)
    }
}

/// A completion that committed though its answer was lost with the
/// connection is tried again, refused (the task is no longer running
/// under that lease), and then recognised in the task's history as this
/// run's: the waiter gets the result, rather than the pool taking it for a
/// lost lease and never telling anyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_recorded_before_its_answer_was_lost_reaches_the_waiter() {
    let backend = Hooked {
        inner: wpool::backend::EmbeddedBackend::open(Arc::new(MemoryStore::new())).unwrap(),
        hooks: AnswerLost {
            lose_next: std::sync::atomic::AtomicBool::new(true),
        },
    };
    let pool = Pool::with_backend(config(1), Arc::new(backend)).unwrap();
    let echo = module(&pool, programs::P1_ECHO).await;
    let handle = pool
        .submit(TaskSpec::new(echo, b"kept".to_vec()))
        .await
        .unwrap();
    let result = tokio::time::timeout(Duration::from_secs(20), handle.wait())
        .await
        .expect("the waiter was never told of the result")
        .unwrap();
    assert_eq!(result.state, TaskState::Succeeded);
    assert_eq!(result.output, b"kept");
    assert_eq!((result.attempts.len(), result.interruptions), (1, 0));
    // The waiter may read the final record from the store before the pool
    // is through with the lost answer and counts the task: wait for that.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while pool.stats().await.unwrap().finished == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(pool.stats().await.unwrap().finished, 1);
    pool.close().await.unwrap();
}

/// Several waiters of one task each get its whole result: the last one
/// is handed the record itself, the others copies of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_waiter_of_a_task_gets_its_whole_result() {
    let pool = Arc::new(pool(1));
    let echo = module(&pool, programs::P1_ECHO).await;
    pool.pause();
    let handle = pool
        .submit(TaskSpec::new(echo, b"for everyone".to_vec()))
        .await
        .unwrap();
    let id = handle.id();
    let mut waits = vec![tokio::spawn(async move { handle.wait().await })];
    for _ in 0..3 {
        let pool = Arc::clone(&pool);
        waits.push(tokio::spawn(async move { pool.wait(id).await }));
    }
    // The waiters are registered (their first poll) before the run ends.
    tokio::time::sleep(Duration::from_millis(100)).await;
    pool.resume();
    for wait in waits {
        let result = tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .expect("a waiter was never given the result")
            .unwrap()
            .unwrap();
        assert_eq!(result.id, id);
        assert_eq!(result.state, TaskState::Succeeded);
        assert_eq!(result.output, b"for everyone");
        assert_eq!(result.attempts.len(), 1);
    }
    pool.close().await.unwrap();
}

/// One worker, and an epoch tick long enough that every run is short,
/// even in a debug build: the pool holds results for a batch.
fn batching_pool() -> Pool {
    let mut config = config(1);
    config.engine_mut().epoch_tick(Duration::from_millis(50));
    Pool::new(config).unwrap()
}

/// A pool hands the results of short runs over in batches while its
/// workers go from one run to the next: every waiter still gets its own
/// result, the held ones included (a batch is full at 32, or after a
/// tenth of a tick of runs, and the pool then idles with some held).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_held_for_a_batch_all_reach_their_waiters() {
    let pool = batching_pool();
    let echo = module(&pool, programs::P1_ECHO).await;
    pool.pause();
    let mut waits = Vec::new();
    for i in 0..101 {
        let handle = pool
            .submit(TaskSpec::new(echo, format!("task {i}").into_bytes()))
            .await
            .unwrap();
        waits.push(tokio::spawn(async move { handle.wait().await }));
    }
    // The waiters are registered (their first poll) before the runs end.
    tokio::time::sleep(Duration::from_millis(100)).await;
    pool.resume();
    for (i, wait) in waits.into_iter().enumerate() {
        let result = tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .expect("a waiter was never given its result")
            .unwrap()
            .unwrap();
        assert_eq!(result.state, TaskState::Succeeded);
        assert_eq!(result.output, format!("task {i}").into_bytes());
    }
    pool.close().await.unwrap();
}

/// A short run's result held for a batch does not wait for the end of the
/// run its worker goes on to: it is handed over as soon as the workers'
/// runtime is free, here while the next task sleeps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_result_does_not_wait_for_the_next_run() {
    let pool = batching_pool();
    let echo = module(&pool, programs::P1_ECHO).await;
    let sleep = module(&pool, programs::P1_SLEEP).await;
    pool.pause();
    let short = pool
        .submit(TaskSpec::new(echo, b"first".to_vec()))
        .await
        .unwrap();
    // Claimed with the short run's end, by the same worker.
    let long = pool
        .submit(TaskSpec::new(sleep, b"60000".to_vec()))
        .await
        .unwrap();
    let wait = tokio::spawn(async move { short.wait().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    pool.resume();
    let result = tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .expect("the short run's result waited for the long run")
        .unwrap()
        .unwrap();
    assert_eq!(result.output, b"first");
    assert_eq!(
        pool.status(long.id()).await.unwrap().state,
        TaskState::Running
    );
    assert_eq!(long.cancel().await.unwrap(), CancelResult::Killed);
    pool.stop().await.unwrap();
}

/// A worker keeps the module of its last run for the next task of the same
/// module: tasks of two modules, alternating and in runs of one module,
/// each run the module they name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_runs_each_task_with_its_own_module() {
    let pool = pool(1);
    let echo = module(&pool, programs::P1_ECHO).await;
    let whoami = module(&pool, programs::P1_WHOAMI).await;
    // Queued while paused, so that the one worker takes them one after
    // another, each with the end of the one before.
    pool.pause();
    let order = [echo, whoami, echo, echo, whoami, whoami, echo, whoami];
    let mut handles = Vec::new();
    for (i, module) in order.iter().enumerate() {
        let input = if *module == echo {
            format!("echo {i}").into_bytes()
        } else {
            b"0".to_vec()
        };
        handles.push((
            *module,
            pool.submit(TaskSpec::new(*module, input)).await.unwrap(),
        ));
    }
    pool.resume();
    for (i, (module, handle)) in handles.into_iter().enumerate() {
        let id = handle.id();
        let result = handle.wait().await.unwrap();
        assert_eq!(result.state, TaskState::Succeeded, "task {i}");
        let output = String::from_utf8(result.output).unwrap();
        if module == echo {
            assert_eq!(output, format!("echo {i}"));
        } else {
            assert_eq!(output, format!("task {id} attempt 1 slept 0 ms"));
        }
    }
}
