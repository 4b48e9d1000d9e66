//! The queue backend contract (see `wpool::backend`), written once and run
//! against every backend: the embedded backend over the memory store and
//! over the sled store, and the PostgreSQL backend (a database of its own
//! per test, see `pg`). Each test is instantiated per backend by the
//! `contract!` macro at the bottom.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use wpool::backend::{
    Backend, Cancelled, Claim, Completed, CompletedNow, EmbeddedBackend, Enqueued, EnqueuedNow,
    LeaseState,
};
use wpool::store::{Inserted, MemoryStore, SledOptions, SledStore, TaskFilter};
use wpool::{Error, ModuleHash, Outcome, TaskRecord, TaskState, now_millis};
use wpool_test_artifacts as programs;

use crate::util::{ran, task};

const TTL: Duration = Duration::from_secs(30);

/// A backend to test, opened fresh; `reopen` closes it and opens the same
/// data again (a restart), where the backend has data that outlives it.
trait Harness: Send + Sync {
    fn open(&self) -> Arc<dyn Backend>;
    fn reopen(&self, old: Arc<dyn Backend>) -> Arc<dyn Backend>;
}

struct Memory;

impl Harness for Memory {
    fn open(&self) -> Arc<dyn Backend> {
        Arc::new(EmbeddedBackend::open(Arc::new(MemoryStore::new())).unwrap())
    }

    fn reopen(&self, _old: Arc<dyn Backend>) -> Arc<dyn Backend> {
        unreachable!("the memory store does not outlive its backend")
    }
}

struct Sled {
    dir: tempfile::TempDir,
}

impl Sled {
    fn new() -> Self {
        Sled {
            dir: tempfile::tempdir().unwrap(),
        }
    }
}

impl Harness for Sled {
    fn open(&self) -> Arc<dyn Backend> {
        let store = SledStore::open(self.dir.path(), &SledOptions::new()).unwrap();
        Arc::new(EmbeddedBackend::open(Arc::new(store)).unwrap())
    }

    fn reopen(&self, old: Arc<dyn Backend>) -> Arc<dyn Backend> {
        assert_eq!(
            Arc::strong_count(&old),
            1,
            "the test still holds the backend"
        );
        drop(old);
        self.open()
    }
}

/// A PostgreSQL database of its own; reopening is another host (or the
/// same one restarted) connecting to it.
struct Postgres {
    db: crate::pg::TestDatabase,
}

impl Postgres {
    fn new() -> Self {
        Postgres {
            db: crate::pg::TestDatabase::create(),
        }
    }
}

impl Harness for Postgres {
    fn open(&self) -> Arc<dyn Backend> {
        self.db.open()
    }

    fn reopen(&self, old: Arc<dyn Backend>) -> Arc<dyn Backend> {
        assert_eq!(
            Arc::strong_count(&old),
            1,
            "the test still holds the backend"
        );
        drop(old);
        self.open()
    }
}

async fn module(backend: &Arc<dyn Backend>) -> ModuleHash {
    let wasm = std::fs::read(programs::P1_TRIVIAL).unwrap();
    let hash = ModuleHash::of(&wasm);
    backend.put_module(&hash, &wasm).await.unwrap();
    hash
}

async fn enqueue(backend: &Arc<dyn Backend>, tasks: Vec<TaskRecord>) -> Vec<TaskRecord> {
    backend
        .enqueue(tasks)
        .await
        .unwrap()
        .into_iter()
        .map(|e| match e {
            Enqueued::New(record) => *record,
            Enqueued::Existing(id) => panic!("{id} already existed"),
        })
        .collect()
}

/// Completes the run under `lease`, which must still hold.
async fn complete(
    backend: &Arc<dyn Backend>,
    lease: &wpool::Lease,
    outcome: Outcome,
) -> TaskRecord {
    match backend.complete(lease, ran(outcome)).await.unwrap() {
        Completed::Recorded(record) => Arc::unwrap_or_clone(record),
        Completed::LeaseLost => panic!("the holder's completion was refused"),
    }
}

async fn counts_add_up(backend: &Arc<dyn Backend>, total: u64) {
    let counts = backend.counts().await.unwrap();
    assert_eq!(counts.total(), total, "{counts:?}");
    let listed = backend
        .list(&TaskFilter {
            limit: 10_000,
            ..TaskFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.len() as u64, total);
    for state in TaskState::ALL {
        let n = listed.iter().filter(|t| t.state == state).count() as u64;
        assert_eq!(counts.get(state), n, "{state}");
    }
}

async fn claims_by_priority_then_submission_order(h: &dyn Harness) {
    let backend = h.open();
    let m = module(&backend).await;
    let tasks = enqueue(
        &backend,
        vec![
            task(m, |s| s.label("n", "low-1")),
            task(m, |s| s.priority(5).label("n", "high-1")),
            task(m, |s| s.label("n", "low-2")),
            task(m, |s| s.priority(5).label("n", "high-2")),
            task(m, |s| s.priority(-1).label("n", "lowest")),
        ],
    )
    .await;
    assert!(
        tasks.windows(2).all(|w| w[0].seq < w[1].seq),
        "seq follows submission"
    );
    let mut order = Vec::new();
    loop {
        let claim = backend.claim(1, TTL).await.unwrap();
        let Some((record, lease)) = claim.claimed.into_iter().next() else {
            break;
        };
        assert_eq!(record.state, TaskState::Running);
        assert_eq!(lease.task, record.id);
        order.push(record.labels["n"].clone());
    }
    assert_eq!(order, ["high-1", "high-2", "low-1", "low-2", "lowest"]);
    counts_add_up(&backend, 5).await;
}

/// `known_unfinished`: a backend of one host knows its waiting and
/// running tasks (a waiter then reads nothing); a shared one says
/// nothing, and the waiter reads the record.
async fn what_is_known_unfinished_without_a_read(h: &dyn Harness) {
    let backend = h.open();
    let m = module(&backend).await;
    let tasks = enqueue(
        &backend,
        vec![
            task(m, |s| s),
            task(m, |s| s.delay(Duration::from_secs(60))),
        ],
    )
    .await;
    let known = |id| backend.known_unfinished(id);
    let one_host = !backend.is_shared();
    assert_eq!(known(&tasks[0].id), one_host, "queued");
    assert_eq!(known(&tasks[1].id), one_host, "scheduled");
    let (running, lease) = backend.claim(1, TTL).await.unwrap().claimed.remove(0);
    assert_eq!(running.id, tasks[0].id);
    assert_eq!(known(&running.id), one_host, "running");
    complete(&backend, &lease, Outcome::Success).await;
    assert!(!known(&running.id), "finished");
    assert!(!known(&wpool::TaskId::new()), "unknown");
}

async fn claims_at_most_what_is_asked(h: &dyn Harness) {
    let backend = h.open();
    let m = module(&backend).await;
    enqueue(&backend, (0..5).map(|_| task(m, |s| s)).collect()).await;
    assert_eq!(backend.claim(2, TTL).await.unwrap().claimed.len(), 2);
    assert_eq!(backend.claim(10, TTL).await.unwrap().claimed.len(), 3);
    assert!(backend.claim(10, TTL).await.unwrap().claimed.is_empty());
    let counts = backend.counts().await.unwrap();
    assert_eq!(counts.get(TaskState::Running), 5);
}

async fn delayed_tasks_become_ready_at_their_time(h: &dyn Harness) {
    let backend = h.open();
    let m = module(&backend).await;
    let delayed = enqueue(
        &backend,
        vec![task(m, |s| s.delay(Duration::from_millis(300)))],
    )
    .await
    .remove(0);
    assert_eq!(delayed.state, TaskState::Scheduled);
    let tick = backend.tick().await.unwrap();
    assert_eq!(tick.promoted, 0);
    assert_eq!(tick.next, Some(delayed.run_at));
    assert!(backend.claim(1, TTL).await.unwrap().claimed.is_empty());
    tokio::time::sleep(Duration::from_millis(350)).await;
    let tick = backend.tick().await.unwrap();
    assert_eq!(tick.promoted, 1);
    assert_eq!(tick.next, None);
    let claim = backend.claim(1, TTL).await.unwrap();
    assert_eq!(claim.claimed[0].0.id, delayed.id);
}

async fn waiting_tasks_past_their_expiry_expire(h: &dyn Harness) {
    let backend = h.open();
    let m = module(&backend).await;
    let tasks = enqueue(
        &backend,
        vec![
            task(m, |s| s.expire_after(Duration::from_millis(100))),
            task(m, |s| {
                s.delay(Duration::from_millis(500))
                    .expire_after(Duration::from_millis(100))
            }),
        ],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    // The queued one is found expired when claimed; the scheduled one by
    // the tick.
    let claim = backend.claim(5, TTL).await.unwrap();
    assert!(claim.claimed.is_empty());
    assert_eq!(claim.expired.len(), 1);
    assert_eq!(claim.expired[0].id, tasks[0].id);
    let tick = backend.tick().await.unwrap();
    assert_eq!(tick.expired.len(), 1);
    assert_eq!(tick.expired[0].id, tasks[1].id);
    for t in &tasks {
        let stored = backend.get(&t.id).await.unwrap().unwrap();
        assert_eq!(stored.state, TaskState::Expired);
        assert!(stored.attempts.is_empty());
        assert_eq!(stored.result().unwrap().outcome, None);
    }
    counts_add_up(&backend, 2).await;
}

async fn a_completion_under_a_lost_lease_is_refused(h: &dyn Harness) {
    let backend = h.open();
    let m = module(&backend).await;
    let id = enqueue(&backend, vec![task(m, |s| s)]).await[0].id;
    let (_, first) = backend
        .claim(1, Duration::from_millis(50))
        .await
        .unwrap()
        .claimed
        .remove(0);
    assert_eq!(
        backend
            .renew(&[first], Duration::from_millis(50))
            .await
            .unwrap(),
        [LeaseState::Held]
    );
    assert!(backend.expire_leases().await.unwrap().is_empty(), "renewed");
    tokio::time::sleep(Duration::from_millis(80)).await;
    let expired = backend.expire_leases().await.unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].state, TaskState::Queued);
    assert_eq!(expired[0].interruptions, 1);
    assert!(
        expired[0].attempts.is_empty(),
        "an interruption is not an attempt"
    );
    assert_eq!(
        backend.renew(&[first], TTL).await.unwrap(),
        [LeaseState::Lost]
    );

    let (record, second) = backend.claim(1, TTL).await.unwrap().claimed.remove(0);
    assert_eq!(record.id, id);
    assert_ne!(first.token, second.token);
    assert_eq!(record.attempts.len(), 1);
    // The old holder comes back: refused, nothing written.
    let refused = backend
        .complete(&first, ran(Outcome::Trap("stale".into())))
        .await
        .unwrap();
    assert_eq!(refused, Completed::LeaseLost);
    assert!(!backend.release(&first).await.unwrap());
    assert_eq!(
        backend.get(&id).await.unwrap().unwrap().state,
        TaskState::Running
    );
    let done = complete(&backend, &second, Outcome::Success).await;
    assert_eq!(done.state, TaskState::Succeeded);
    assert_eq!(done.interruptions, 1);
    assert_eq!(done.attempts.len(), 1);
    // Completing twice is refused too: the lease ended with the run.
    assert_eq!(
        backend
            .complete(&second, ran(Outcome::Success))
            .await
            .unwrap(),
        Completed::LeaseLost
    );
    let stored = backend.get(&id).await.unwrap().unwrap();
    assert_eq!(stored.output, wpool::Payload::Inline(b"out".to_vec()));
    assert_eq!(stored.lease, None);
    counts_add_up(&backend, 1).await;
}

async fn interruptions_end_a_task_at_its_limit(h: &dyn Harness) {
    let backend = h.open();
    let m = module(&backend).await;
    let id = enqueue(
        &backend,
        vec![task(m, |s| s.max_interruptions(2).max_attempts(5))],
    )
    .await[0]
        .id;
    for round in 1..=2u32 {
        backend.claim(1, Duration::from_millis(20)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(40)).await;
        let expired = backend.expire_leases().await.unwrap();
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].interruptions, round);
    }
    let record = backend.get(&id).await.unwrap().unwrap();
    assert_eq!(record.state, TaskState::Failed);
    assert_eq!(record.outcome, Some(Outcome::Interrupted(2)));
    assert!(
        record.attempts.is_empty(),
        "no attempt ended with its own outcome"
    );
    assert!(backend.claim(1, TTL).await.unwrap().claimed.is_empty());
    counts_add_up(&backend, 1).await;
}

/// A claim ahead of a free worker stores no attempt; its run's end
/// stores the attempt with the start the runner gives; its loss counts an
/// interruption that never ends the task, until the task's losses reach
/// its most: then it is claimed as for a free worker, and the next loss
/// ends it.
async fn claims_ahead_store_no_attempt_and_their_loss_never_ends_a_task(h: &dyn Harness) {
    let backend = h.open();
    let m = module(&backend).await;
    let ids: Vec<_> = enqueue(
        &backend,
        vec![
            task(m, |s| s.max_interruptions(2)),
            task(m, |s| s.max_interruptions(2)),
            task(m, |s| s),
        ],
    )
    .await
    .iter()
    .map(|r| r.id)
    .collect();

    // One for a free worker, two ahead: in order, and only the first has
    // its attempt stored.
    let claim = backend
        .claim_ahead(1, 2, Duration::from_millis(20))
        .await
        .unwrap();
    let claimed: Vec<_> = claim.claimed.iter().map(|(r, _)| r.id).collect();
    assert_eq!(claimed, ids);
    for (i, (record, _)) in claim.claimed.iter().enumerate() {
        let stored = backend.get(&record.id).await.unwrap().unwrap();
        assert_eq!(stored.state, TaskState::Running);
        assert_eq!(stored.attempts.len(), usize::from(i == 0), "{i}");
        assert_eq!(stored.has_open_attempt(), i == 0, "{i}");
    }

    // The second one's lease is lost, twice, while claimed ahead: counted,
    // never ended.
    tokio::time::sleep(Duration::from_millis(40)).await;
    let expired = backend.expire_leases().await.unwrap();
    assert_eq!(expired.len(), 3);
    for round in 2..=3u32 {
        let record = backend.get(&ids[1]).await.unwrap().unwrap();
        assert_eq!(record.state, TaskState::Queued, "round {round}");
        assert!(record.attempts.is_empty());
        assert_eq!(record.interruptions, round - 1);
        assert_eq!(record.outcome, None);
        if round == 3 {
            break;
        }
        // The first is claimed for a free worker, the second ahead again.
        let claim = backend
            .claim_ahead(1, 1, Duration::from_millis(20))
            .await
            .unwrap();
        assert_eq!(claim.claimed[1].0.id, ids[1]);
        assert!(!claim.claimed[1].0.has_open_attempt());
        tokio::time::sleep(Duration::from_millis(40)).await;
        backend.expire_leases().await.unwrap();
    }
    // The first one, lost twice with its attempt stored, ended.
    let first = backend.get(&ids[0]).await.unwrap().unwrap();
    assert_eq!(first.state, TaskState::Failed);
    assert_eq!(first.outcome, Some(Outcome::Interrupted(2)));

    // At its most, the second is claimed as for a free worker even when
    // asked ahead; and its next loss ends it.
    let claim = backend
        .claim_ahead(0, 1, Duration::from_millis(20))
        .await
        .unwrap();
    assert_eq!(claim.claimed[0].0.id, ids[1]);
    assert!(claim.claimed[0].0.has_open_attempt());
    tokio::time::sleep(Duration::from_millis(40)).await;
    backend.expire_leases().await.unwrap();
    let second = backend.get(&ids[1]).await.unwrap().unwrap();
    assert_eq!(second.state, TaskState::Failed);
    assert_eq!(second.outcome, Some(Outcome::Interrupted(3)));

    // The third, claimed ahead and run: its end stores the attempt, with
    // the start its runner gives.
    let (mut record, lease) = backend
        .claim_ahead(0, 1, TTL)
        .await
        .unwrap()
        .claimed
        .remove(0);
    assert_eq!(record.id, ids[2]);
    assert!(record.attempts.is_empty());
    Arc::make_mut(&mut record).begin(12_345);
    assert_eq!(record.attempts.len(), 1);
    let mut run = ran(Outcome::Success);
    run.started_at = record.attempts[0].started_at;
    let done = match backend.complete(&lease, run).await.unwrap() {
        Completed::Recorded(record) => Arc::unwrap_or_clone(record),
        Completed::LeaseLost => panic!("the lease was held"),
    };
    assert_eq!(done.state, TaskState::Succeeded);
    assert_eq!(done.attempts.len(), 1);
    assert_eq!(done.attempts[0].number, 1);
    assert_eq!(done.attempts[0].started_at, 12_345);
    assert_eq!(done.attempts[0].outcome, Some(Outcome::Success));
    assert_eq!(backend.get(&ids[2]).await.unwrap().unwrap(), done);
    counts_add_up(&backend, 3).await;
}

async fn a_release_puts_the_task_back_uncounted(h: &dyn Harness) {
    let backend = h.open();
    let m = module(&backend).await;
    let id = enqueue(&backend, vec![task(m, |s| s)]).await[0].id;
    let (_, lease) = backend.claim(1, TTL).await.unwrap().claimed.remove(0);
    assert!(backend.release(&lease).await.unwrap());
    assert!(!backend.release(&lease).await.unwrap(), "released once");
    let record = backend.get(&id).await.unwrap().unwrap();
    assert_eq!(record.state, TaskState::Queued);
    assert!(record.attempts.is_empty());
    assert_eq!(record.interruptions, 0);
    assert_eq!(backend.claim(1, TTL).await.unwrap().claimed[0].0.id, id);
}

async fn a_retryable_failure_is_scheduled_until_attempts_run_out(h: &dyn Harness) {
    let backend = h.open();
    let m = module(&backend).await;
    let id = enqueue(
        &backend,
        vec![task(m, |s| {
            s.max_attempts(2).backoff(wpool::Backoff {
                initial: Duration::from_millis(50),
                max: Duration::from_millis(50),
                multiplier: 1.0,
                jitter: false,
            })
        })],
    )
    .await[0]
        .id;
    let (_, lease) = backend.claim(1, TTL).await.unwrap().claimed.remove(0);
    let record = complete(&backend, &lease, Outcome::Exit(3)).await;
    assert_eq!(record.state, TaskState::Scheduled);
    assert!(record.run_at >= record.updated_at + 50);
    tokio::time::sleep(Duration::from_millis(70)).await;
    assert_eq!(backend.tick().await.unwrap().promoted, 1);
    let (_, lease) = backend.claim(1, TTL).await.unwrap().claimed.remove(0);
    let record = complete(&backend, &lease, Outcome::Exit(3)).await;
    assert_eq!(record.state, TaskState::Failed);
    assert_eq!(
        record.attempts.len(),
        2,
        "attempts never exceed max_attempts"
    );
    assert_eq!(record.outcome, Some(Outcome::Exit(3)));
    assert_eq!(backend.get(&id).await.unwrap().unwrap(), record);
}

async fn idempotency_keys_store_a_task_once(h: &dyn Harness) {
    let backend = h.open();
    let m = module(&backend).await;
    let first = enqueue(&backend, vec![task(m, |s| s.idempotency_key("k1"))]).await[0].id;
    let answers = backend
        .enqueue(vec![
            task(m, |s| s.idempotency_key("k1")),
            task(m, |s| s.idempotency_key("k2")),
            task(m, |s| s.idempotency_key("k2")),
            task(m, |s| s),
        ])
        .await
        .unwrap();
    assert_eq!(answers[0], Enqueued::Existing(first));
    let Enqueued::New(k2) = &answers[1] else {
        panic!("{answers:?}")
    };
    assert_eq!(
        answers[2],
        Enqueued::Existing(k2.id),
        "a key twice in one batch"
    );
    assert!(matches!(answers[3], Enqueued::New(_)));
    assert_eq!(backend.by_key("k1").await.unwrap(), Some(first));
    assert_eq!(backend.by_key("k2").await.unwrap(), Some(k2.id));
    assert_eq!(backend.by_key("k3").await.unwrap(), None);
    counts_add_up(&backend, 3).await;
}

/// A batch that names one task twice is refused whole, with an error
/// that says so: nothing of it is stored or queued.
async fn a_batch_naming_a_task_twice_is_refused_whole(h: &dyn Harness) {
    let backend = h.open();
    let m = module(&backend).await;
    let twice = task(m, |s| s);
    let other = task(m, |s| s);
    let error = backend
        .enqueue(vec![twice.clone(), other.clone(), twice.clone()])
        .await
        .unwrap_err();
    assert!(error.to_string().contains("twice in one batch"), "{error}");
    assert_eq!(backend.get(&twice.id).await.unwrap(), None);
    assert_eq!(backend.get(&other.id).await.unwrap(), None);
    counts_add_up(&backend, 0).await;
    assert!(backend.claim(2, TTL).await.unwrap().claimed.is_empty());
    // The same tasks, each once, are stored.
    let stored = enqueue(&backend, vec![twice, other]).await;
    assert_eq!(stored.len(), 2);
    counts_add_up(&backend, 2).await;
}

/// A single task enqueued alone is stored as in a batch: its `seq`
/// assigned, its key honoured, its module checked, and it is claimed.
async fn one_task_enqueued_alone_is_stored_as_in_a_batch(h: &dyn Harness) {
    let backend = h.open();
    let m = module(&backend).await;
    let first = enqueue(&backend, vec![task(m, |s| s)]).await[0].clone();
    let Enqueued::New(alone) = backend
        .enqueue_one(Box::new(task(m, |s| s.idempotency_key("k1").priority(3))))
        .await
        .unwrap()
    else {
        panic!("a new task was not stored");
    };
    assert!(alone.seq > first.seq, "{} after {}", alone.seq, first.seq);
    assert_eq!(alone.state, TaskState::Queued);
    assert_eq!(
        backend.get(&alone.id).await.unwrap().as_ref(),
        Some(&*alone)
    );
    assert_eq!(
        backend
            .enqueue_one(Box::new(task(m, |s| s.idempotency_key("k1"))))
            .await
            .unwrap(),
        Enqueued::Existing(alone.id)
    );
    let unknown = ModuleHash::of(b"no such module");
    let error = backend
        .enqueue_one(Box::new(task(unknown, |s| s)))
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::UnknownModule(h) if h == unknown),
        "{error}"
    );
    // Indexed: claimed first, by its priority.
    let claim = backend.claim(1, TTL).await.unwrap();
    assert_eq!(claim.claimed.len(), 1);
    assert_eq!(claim.claimed[0].0.id, alone.id);
    counts_add_up(&backend, 2).await;
}

async fn a_task_naming_an_unknown_module_is_refused(h: &dyn Harness) {
    let backend = h.open();
    let m = module(&backend).await;
    let unknown = ModuleHash::of(b"no such module");
    let error = backend
        .enqueue(vec![task(m, |s| s), task(unknown, |s| s)])
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::UnknownModule(h) if h == unknown),
        "{error}"
    );
    counts_add_up(&backend, 0).await;
    // A module an unfinished task names cannot be deleted.
    enqueue(&backend, vec![task(m, |s| s)]).await;
    assert!(matches!(
        backend.delete_module(&m).await,
        Err(Error::ModuleInUse(_))
    ));
}

async fn cancel_works_in_every_state(h: &dyn Harness) {
    let backend = h.open();
    let m = module(&backend).await;
    let tasks = enqueue(
        &backend,
        vec![
            task(m, |s| s.priority(9)),
            task(m, |s| s.priority(8)),
            task(m, |s| s),
            task(m, |s| s.delay(Duration::from_secs(60))),
        ],
    )
    .await;
    let claim = backend.claim(2, TTL).await.unwrap();
    let (run_a, lease_a) = &claim.claimed[0];
    let (run_b, lease_b) = &claim.claimed[1];
    // Waiting, queued and scheduled: cancelled at once.
    for waiting in &tasks[2..] {
        let Cancelled::Cancelled(record) = backend.cancel(&waiting.id).await.unwrap() else {
            panic!("not cancelled")
        };
        assert_eq!(record.state, TaskState::Cancelled);
        assert_eq!(record.outcome, Some(Outcome::Cancelled));
    }
    // Running: the holder is told, and the run ends cancelled.
    assert!(!backend.cancel_requested(&run_a.id));
    assert_eq!(
        backend.cancel(&run_a.id).await.unwrap(),
        Cancelled::Requested
    );
    // A backend of one host knows it at once, without a read: a pool asks
    // when a run starts, for a cancel that came before the run could be
    // killed (a shared backend tells at the next heartbeat, as below).
    if !backend.is_shared() {
        assert!(backend.cancel_requested(&run_a.id));
        assert!(!backend.cancel_requested(&run_b.id));
    }
    assert_eq!(
        backend.renew(&[*lease_a], TTL).await.unwrap(),
        [LeaseState::CancelRequested]
    );
    let record = complete(&backend, lease_a, Outcome::Cancelled).await;
    assert_eq!(record.state, TaskState::Cancelled);
    // Running, then its lease is lost: it ends cancelled, not queued again.
    assert_eq!(
        backend.cancel(&run_b.id).await.unwrap(),
        Cancelled::Requested
    );
    assert!(backend.renew(&[*lease_b], Duration::ZERO).await.is_ok());
    tokio::time::sleep(Duration::from_millis(5)).await;
    let expired = backend.expire_leases().await.unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].state, TaskState::Cancelled);
    // Final: left as it is.
    assert_eq!(
        backend.cancel(&run_a.id).await.unwrap(),
        Cancelled::AlreadyFinished(TaskState::Cancelled)
    );
    assert_eq!(
        backend.cancel(&wpool::TaskId::new()).await.unwrap(),
        Cancelled::NotFound
    );
    assert!(backend.claim(5, TTL).await.unwrap().claimed.is_empty());
    counts_add_up(&backend, 4).await;
    assert_eq!(backend.counts().await.unwrap().get(TaskState::Cancelled), 4);
    // Both marked runs are gone (one completed, one expired): a new run is
    // not marked, and a cancel of it is known at once again.
    if !backend.is_shared() {
        enqueue(&backend, vec![task(m, |s| s)]).await;
        let (run_c, lease_c) = backend.claim(1, TTL).await.unwrap().claimed.remove(0);
        assert!(!backend.cancel_requested(&run_c.id));
        assert_eq!(
            backend.cancel(&run_c.id).await.unwrap(),
            Cancelled::Requested
        );
        assert!(backend.cancel_requested(&run_c.id));
        assert!(backend.release(&lease_c).await.unwrap());
        assert!(!backend.cancel_requested(&run_c.id));
    }
}

async fn retention_purges_finished_tasks(h: &dyn Harness) {
    let backend = h.open();
    let m = module(&backend).await;
    let tasks = enqueue(&backend, (0..6).map(|_| task(m, |s| s)).collect()).await;
    for _ in 0..4 {
        let (_, lease) = backend.claim(1, TTL).await.unwrap().claimed.remove(0);
        backend
            .complete(&lease, ran(Outcome::Success))
            .await
            .unwrap();
    }
    // Keep the 3 most recent finished: one goes.
    assert_eq!(backend.purge_finished(0, Some(3)).await.unwrap(), 1);
    assert!(backend.get(&tasks[0].id).await.unwrap().is_none());
    // Everything finished before now: the other three go; waiting ones stay.
    tokio::time::sleep(Duration::from_millis(2)).await;
    assert_eq!(backend.purge_finished(now_millis(), None).await.unwrap(), 3);
    counts_add_up(&backend, 2).await;
}

async fn delete_removes_final_tasks_only(h: &dyn Harness) {
    let backend = h.open();
    let m = module(&backend).await;
    let tasks = enqueue(&backend, (0..3).map(|_| task(m, |s| s)).collect()).await;
    let (done, lease) = backend.claim(1, TTL).await.unwrap().claimed.remove(0);
    backend
        .complete(&lease, ran(Outcome::Success))
        .await
        .unwrap();
    let waiting: Vec<_> = tasks
        .iter()
        .map(|t| t.id)
        .filter(|id| *id != done.id)
        .collect();
    let unknown = wpool::TaskId::new();
    let asked = [done.id, waiting[0], unknown];
    assert_eq!(backend.delete_finished(&asked).await.unwrap(), [done.id]);
    assert!(backend.get(&done.id).await.unwrap().is_none());
    assert!(
        backend.get(&waiting[0]).await.unwrap().is_some(),
        "a waiting task stays"
    );
    assert!(
        backend
            .delete_finished(&[done.id])
            .await
            .unwrap()
            .is_empty()
    );
    counts_add_up(&backend, 2).await;
}

async fn concurrent_claimers_never_share_a_task(h: &dyn Harness) {
    let backend = h.open();
    let m = module(&backend).await;
    let n = 1_000;
    enqueue(&backend, (0..n).map(|_| task(m, |s| s)).collect()).await;
    let claimers: Vec<_> = (0..8)
        .map(|_| {
            let backend = backend.clone();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let claim = backend.claim(3, TTL).await.unwrap();
                    if claim.claimed.is_empty() {
                        return mine;
                    }
                    for (record, lease) in claim.claimed {
                        let done = backend
                            .complete(&lease, ran(Outcome::Success))
                            .await
                            .unwrap();
                        assert!(matches!(done, Completed::Recorded(_)));
                        mine.push(record.id);
                    }
                }
            })
        })
        .collect();
    let mut seen = HashSet::new();
    let mut total = 0;
    for claimer in claimers {
        for id in claimer.await.unwrap() {
            total += 1;
            assert!(seen.insert(id), "{id} claimed twice");
        }
    }
    assert_eq!(total, n);
    assert_eq!(
        backend.counts().await.unwrap().get(TaskState::Succeeded),
        n as u64
    );
}

/// `complete_and_claim_now`: the backends that make the call at once (a
/// store in memory, whose writes need no flush) answer as
/// `complete_and_claim` does, the claim in the one lent; the others
/// leave everything as it was, and give the run's end back for the async
/// call.
async fn an_end_made_at_once_answers_as_the_async_call(h: &dyn Harness) {
    let backend = h.open();
    let m = module(&backend).await;
    let tasks = enqueue(&backend, vec![task(m, |s| s), task(m, |s| s)]).await;
    let (first, lease) = backend.claim(1, TTL).await.unwrap().claimed.remove(0);
    assert_eq!(first.id, tasks[0].id);
    let stale = wpool::Lease {
        token: lease.token.wrapping_add(1),
        ..lease
    };
    let at_once = !backend.is_durable();
    let mut claim = Claim::default();
    match backend.complete_and_claim_now(&stale, ran(Outcome::Success), 1, TTL, &mut claim) {
        CompletedNow::Done(refused) => {
            assert!(at_once, "made at once on a store in memory only");
            assert_eq!(refused.unwrap(), Completed::LeaseLost);
        }
        CompletedNow::Later(run, failed) => {
            assert!(!at_once, "a store in memory makes it at once");
            assert_eq!(run, ran(Outcome::Success), "the run's end given back");
            assert!(failed.is_none(), "{failed:?}");
        }
    }
    assert!(claim.claimed.is_empty() && claim.expired.is_empty());
    assert_eq!(
        backend.get(&first.id).await.unwrap().unwrap().state,
        TaskState::Running,
        "a refused or unmade end writes nothing"
    );
    let run = ran(Outcome::Success);
    let done = match backend.complete_and_claim_now(&lease, run.clone(), 1, TTL, &mut claim) {
        CompletedNow::Done(done) => done.unwrap(),
        CompletedNow::Later(given, _) => {
            assert_eq!(given, run);
            let done;
            (done, claim) = backend
                .complete_and_claim(&lease, given, 1, TTL)
                .await
                .unwrap();
            done
        }
    };
    let Completed::Recorded(done) = done else {
        panic!("the holder's completion was refused")
    };
    assert_eq!((done.id, done.state), (first.id, TaskState::Succeeded));
    let (next, _) = claim.claimed.remove(0);
    assert_eq!((next.id, next.state), (tasks[1].id, TaskState::Running));
    assert_eq!(
        backend.get(&first.id).await.unwrap().unwrap().state,
        TaskState::Succeeded
    );
    assert_eq!(
        backend.get(&next.id).await.unwrap().unwrap().state,
        TaskState::Running
    );
    counts_add_up(&backend, 2).await;
}

/// Enqueues `task` with `enqueue_one_now` where the backend stores it at
/// once, else with `enqueue_one`; the answer as `Inserted` gives it.
async fn enqueue_one_either(
    backend: &Arc<dyn Backend>,
    task: TaskRecord,
) -> Result<Inserted, Error> {
    let id = task.id;
    match backend.enqueue_one_now(Box::new(task.clone())) {
        EnqueuedNow::Done(inserted) => {
            assert!(!backend.is_durable(), "a durable store stores at once");
            inserted
        }
        EnqueuedNow::Later(given) => {
            assert!(
                backend.is_durable() || backend.is_shared(),
                "a store in memory gives the task back"
            );
            assert_eq!(*given, task, "the task comes back as it was given");
            match backend.enqueue_one(given).await? {
                Enqueued::New(stored) => {
                    assert_eq!(stored.id, id);
                    Ok(Inserted::New)
                }
                Enqueued::Existing(holder) => Ok(Inserted::Existing(holder)),
            }
        }
    }
}

/// `enqueue_one_now`: the backends that store a task at once (a store in
/// memory) answer as `enqueue_one` does, idempotency keys and unknown
/// modules included; the others give the task back untouched.
async fn a_task_stored_at_once_answers_as_the_async_call(h: &dyn Harness) {
    let backend = h.open();
    let m = module(&backend).await;
    let first = task(m, |s| s.idempotency_key("k-now").priority(3));
    assert_eq!(
        enqueue_one_either(&backend, first.clone()).await.unwrap(),
        Inserted::New
    );
    let stored = backend.get(&first.id).await.unwrap().unwrap();
    assert_eq!((stored.state, stored.priority), (TaskState::Queued, 3));
    assert!(stored.seq > 0, "its submission order assigned");
    let again = task(m, |s| s.idempotency_key("k-now"));
    assert_eq!(
        enqueue_one_either(&backend, again.clone()).await.unwrap(),
        Inserted::Existing(first.id),
        "the key's holder answers"
    );
    assert_eq!(
        backend.get(&again.id).await.unwrap(),
        None,
        "nothing stored"
    );
    let unknown = task(ModuleHash::of(b"not stored"), |s| s);
    assert!(matches!(
        enqueue_one_either(&backend, unknown.clone()).await,
        Err(Error::UnknownModule(_))
    ));
    assert_eq!(backend.get(&unknown.id).await.unwrap(), None);
    let second = task(m, |s| s);
    assert_eq!(
        enqueue_one_either(&backend, second.clone()).await.unwrap(),
        Inserted::New
    );
    // Indexed as stored: claimed by priority, then in submission order,
    // the refused ones nowhere.
    let claim = backend.claim(4, TTL).await.unwrap();
    let ids: Vec<_> = claim.claimed.iter().map(|(r, _)| r.id).collect();
    assert_eq!(ids, vec![first.id, second.id]);
    counts_add_up(&backend, 2).await;
}

/// `read_final_now`: a backend that reads at once lends the record of a
/// final task as `get_final` reads it, and nothing for a task not final
/// or not there; the others leave it to `get_final`.
async fn a_final_record_read_at_once_is_the_stored_one(h: &dyn Harness) {
    let backend = h.open();
    let m = module(&backend).await;
    let tasks = enqueue(&backend, vec![task(m, |s| s), task(m, |s| s)]).await;
    let (_, lease) = backend.claim(1, TTL).await.unwrap().claimed.remove(0);
    let done = complete(&backend, &lease, Outcome::Success).await;
    let read = |id| {
        let mut lent = None;
        let answer = backend.read_final_now(&id, &mut |r| lent = Some(r.clone()));
        answer.map(|found| (found.unwrap(), lent))
    };
    let at_once = !backend.is_durable() && !backend.is_shared();
    match read(done.id) {
        Some((found, lent)) => {
            assert!(at_once, "read at once on a store in memory only");
            assert!(found);
            assert_eq!(lent.as_ref(), Some(&done));
            assert_eq!(
                backend.get_final(&done.id).await.unwrap().as_deref(),
                lent.as_ref()
            );
        }
        None => assert!(!at_once, "a store in memory reads at once"),
    }
    for id in [tasks[1].id, wpool::TaskId::new()] {
        if let Some((found, lent)) = read(id) {
            assert!(!found, "not final, or not there");
            assert_eq!(lent, None, "nothing lent");
        }
    }
}

/// A worker records its run's end and claims its next task in one call;
/// a lost lease claims nothing.
async fn a_run_s_end_claims_the_next_task(h: &dyn Harness) {
    let backend = h.open();
    let m = module(&backend).await;
    let tasks = enqueue(
        &backend,
        vec![
            task(m, |s| s.label("n", "low")),
            task(m, |s| s.priority(5).label("n", "high")),
            task(m, |s| s.label("n", "last")),
        ],
    )
    .await;
    let (first, lease) = backend.claim(1, TTL).await.unwrap().claimed.remove(0);
    assert_eq!(first.id, tasks[1].id);
    let (done, mut claim) = backend
        .complete_and_claim(&lease, ran(Outcome::Success), 1, TTL)
        .await
        .unwrap();
    let Completed::Recorded(done) = done else {
        panic!("the holder's completion was refused")
    };
    assert_eq!((done.id, done.state), (first.id, TaskState::Succeeded));
    assert_eq!(claim.claimed.len(), 1, "one asked, one claimed");
    let (next, next_lease) = claim.claimed.remove(0);
    assert_eq!((next.id, next.state), (tasks[0].id, TaskState::Running));
    assert_eq!(next.attempts.len(), 1);
    assert_eq!(next_lease.task, next.id);
    // Stored as returned: the end and the claim.
    let stored = backend.get(&next.id).await.unwrap().unwrap();
    assert_eq!(stored.state, TaskState::Running);
    assert_eq!(
        backend.get(&first.id).await.unwrap().unwrap().state,
        TaskState::Succeeded
    );
    // The old lease again: refused, and nothing claimed.
    let (refused, claim) = backend
        .complete_and_claim(&lease, ran(Outcome::Success), 1, TTL)
        .await
        .unwrap();
    assert_eq!(refused, Completed::LeaseLost);
    assert!(claim.claimed.is_empty());
    // None asked: none claimed.
    let (done, claim) = backend
        .complete_and_claim(&next_lease, ran(Outcome::Success), 0, TTL)
        .await
        .unwrap();
    assert!(matches!(done, Completed::Recorded(_)));
    assert!(claim.claimed.is_empty());
    let counts = backend.counts().await.unwrap();
    assert_eq!(
        (
            counts.get(TaskState::Succeeded),
            counts.get(TaskState::Queued)
        ),
        (2, 1)
    );
    counts_add_up(&backend, 3).await;
}

/// Durable backends only: a restart loses the leases of the process that
/// held them, and each counts an interruption.
async fn a_restart_expires_the_leases_taken_before(h: &dyn Harness) {
    let backend = h.open();
    let m = module(&backend).await;
    let tasks = enqueue(
        &backend,
        vec![
            task(m, |s| s),
            task(m, |s| s.max_interruptions(1)),
            task(m, |s| s),
            task(m, |s| s),
        ],
    )
    .await;
    let claim = backend.claim(3, TTL).await.unwrap();
    assert_eq!(claim.claimed.len(), 3);
    let lease = claim.claimed[0].1;
    assert_eq!(
        backend.cancel(&tasks[2].id).await.unwrap(),
        Cancelled::Requested
    );
    let backend = h.reopen(backend);
    let get = |i: usize| {
        let backend = backend.clone();
        let id = tasks[i].id;
        async move { backend.get(&id).await.unwrap().unwrap() }
    };
    let requeued = get(0).await;
    assert_eq!(requeued.state, TaskState::Queued);
    assert_eq!((requeued.interruptions, requeued.attempts.len()), (1, 0));
    let ended = get(1).await;
    assert_eq!(ended.state, TaskState::Failed);
    assert_eq!(ended.outcome, Some(Outcome::Interrupted(1)));
    assert_eq!(get(2).await.state, TaskState::Cancelled);
    assert_eq!(get(3).await.state, TaskState::Queued);
    // The old lease names nothing now.
    assert_eq!(
        backend
            .complete(&lease, ran(Outcome::Success))
            .await
            .unwrap(),
        Completed::LeaseLost
    );
    // In order, as submitted.
    let claim = backend.claim(5, TTL).await.unwrap();
    let ids: Vec<_> = claim.claimed.iter().map(|(r, _)| r.id).collect();
    assert_eq!(ids, [tasks[0].id, tasks[3].id]);
    counts_add_up(&backend, 4).await;
}

/// Shared backends only: a host that connects (or connects again) leaves
/// the leases it finds alone, since the hosts holding them may be alive;
/// they expire by time only.
async fn connecting_leaves_the_leases_of_other_hosts_alone(h: &dyn Harness) {
    let backend = h.open();
    let m = module(&backend).await;
    let tasks = enqueue(&backend, vec![task(m, |s| s), task(m, |s| s)]).await;
    let (_, lease) = backend.claim(1, TTL).await.unwrap().claimed.remove(0);
    assert_eq!(lease.task, tasks[0].id);
    let backend = h.reopen(backend);
    let held = backend.get(&tasks[0].id).await.unwrap().unwrap();
    assert_eq!(held.state, TaskState::Running);
    assert_eq!(held.interruptions, 0);
    assert_eq!(held.lease.map(|l| l.token), Some(lease.token));
    assert!(backend.expire_leases().await.unwrap().is_empty());
    let claim = backend.claim(5, TTL).await.unwrap();
    let ids: Vec<_> = claim.claimed.iter().map(|(r, _)| r.id).collect();
    assert_eq!(ids, [tasks[1].id], "the held task is not handed out again");
    // The holder goes on as if nothing happened.
    assert_eq!(
        backend.renew(&[lease], TTL).await.unwrap(),
        [LeaseState::Held]
    );
    let done = complete(&backend, &lease, Outcome::Success).await;
    assert_eq!(done.state, TaskState::Succeeded);
    assert_eq!((done.interruptions, done.attempts.len()), (0, 1));
    counts_add_up(&backend, 2).await;
}

/// `complete_unflushed` is `complete` but for when the end is durable:
/// fenced by the lease like it, and, once the caller has flushed, the
/// task is as `complete` leaves it, and outlives a restart where the
/// backend is durable.
async fn an_end_written_without_its_flush_is_fenced_and_kept_once_flushed(h: &dyn Harness) {
    let backend = h.open();
    let m = module(&backend).await;
    enqueue(&backend, vec![task(m, |s| s), task(m, |s| s)]).await;
    // A lease that ran out: refused, nothing written.
    let (_, lost) = backend
        .claim(1, Duration::from_millis(50))
        .await
        .unwrap()
        .claimed
        .remove(0);
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert_eq!(backend.expire_leases().await.unwrap().len(), 1);
    let refused = backend
        .complete_unflushed(&lost, ran(Outcome::Success))
        .await
        .unwrap();
    assert_eq!(refused, Completed::LeaseLost);
    assert_eq!(
        backend.get(&lost.task).await.unwrap().unwrap().state,
        TaskState::Queued
    );

    let (_, lease) = backend.claim(1, TTL).await.unwrap().claimed.remove(0);
    let done = match backend
        .complete_unflushed(&lease, ran(Outcome::Success))
        .await
        .unwrap()
    {
        Completed::Recorded(record) => Arc::unwrap_or_clone(record),
        Completed::LeaseLost => panic!("the holder's end was refused"),
    };
    assert_eq!(done.state, TaskState::Succeeded);
    assert_eq!(done.attempts.len(), 1);
    // The lease ended with the run, as with `complete`.
    assert_eq!(
        backend
            .complete_unflushed(&lease, ran(Outcome::Success))
            .await
            .unwrap(),
        Completed::LeaseLost
    );
    assert_eq!(
        backend.renew(&[lease], TTL).await.unwrap(),
        [LeaseState::Lost]
    );
    backend.flush().await.unwrap();
    let backend = if backend.is_durable() {
        h.reopen(backend)
    } else {
        backend
    };
    let stored = backend.get(&lease.task).await.unwrap().unwrap();
    assert_eq!(stored.state, TaskState::Succeeded);
    assert_eq!(stored.output, wpool::Payload::Inline(b"out".to_vec()));
    assert_eq!(stored.attempts.len(), 1);
    counts_add_up(&backend, 2).await;
}

macro_rules! contract {
    ($harness:ident: $make:expr; $($name:ident),* $(,)?) => {
        mod $harness {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(&$make).await
                }
            )*
        }
    };
}

macro_rules! every_backend {
    ($($name:ident),* $(,)?) => {
        contract!(memory: super::Memory; $($name),*);
        contract!(sled: super::Sled::new(); $($name),*, a_restart_expires_the_leases_taken_before);
        contract!(postgres: super::Postgres::new(); $($name),*, connecting_leaves_the_leases_of_other_hosts_alone);
    };
}

every_backend!(
    claims_by_priority_then_submission_order,
    claims_at_most_what_is_asked,
    delayed_tasks_become_ready_at_their_time,
    waiting_tasks_past_their_expiry_expire,
    a_completion_under_a_lost_lease_is_refused,
    interruptions_end_a_task_at_its_limit,
    claims_ahead_store_no_attempt_and_their_loss_never_ends_a_task,
    a_release_puts_the_task_back_uncounted,
    a_retryable_failure_is_scheduled_until_attempts_run_out,
    idempotency_keys_store_a_task_once,
    a_batch_naming_a_task_twice_is_refused_whole,
    one_task_enqueued_alone_is_stored_as_in_a_batch,
    a_task_naming_an_unknown_module_is_refused,
    cancel_works_in_every_state,
    retention_purges_finished_tasks,
    delete_removes_final_tasks_only,
    concurrent_claimers_never_share_a_task,
    a_run_s_end_claims_the_next_task,
    an_end_made_at_once_answers_as_the_async_call,
    a_task_stored_at_once_answers_as_the_async_call,
    a_final_record_read_at_once_is_the_stored_one,
    what_is_known_unfinished_without_a_read,
    an_end_written_without_its_flush_is_fenced_and_kept_once_flushed,
);

/// An end made at once that the store refuses before using it (its
/// record was changed behind the queue's back) comes back with the error,
/// for the async call and its tries; the store keeps its record.
#[tokio::test]
async fn an_end_the_store_refuses_at_once_comes_back_with_the_error() {
    use wpool::store::Store;
    let store = Arc::new(MemoryStore::new());
    let backend: Arc<dyn Backend> = Arc::new(EmbeddedBackend::open(store.clone()).unwrap());
    let m = module(&backend).await;
    let tasks = enqueue(&backend, vec![task(m, |s| s), task(m, |s| s)]).await;
    let (claimed, lease) = backend.claim(1, TTL).await.unwrap().claimed.remove(0);
    let mut changed = Arc::unwrap_or_clone(claimed);
    changed.lease = Some(wpool::Lease {
        token: lease.token.wrapping_add(7),
        ..lease
    });
    assert!(store.update(&changed, TaskState::Running).unwrap());
    let mut claim = Claim::default();
    let run = ran(Outcome::Success);
    match backend.complete_and_claim_now(&lease, run.clone(), 1, TTL, &mut claim) {
        CompletedNow::Later(given, Some(e)) => {
            assert_eq!(given, run, "the run's end given back whole");
            assert!(e.to_string().contains("behind the queue's back"), "{e}");
        }
        other => panic!("expected the end back with its error, got {other:?}"),
    }
    assert!(claim.claimed.is_empty(), "nothing claimed");
    assert_eq!(store.get(&changed.id).unwrap(), Some(changed));
    assert_eq!(
        backend.get(&tasks[1].id).await.unwrap().unwrap().state,
        TaskState::Queued
    );
}
