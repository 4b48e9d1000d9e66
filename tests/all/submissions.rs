//! A submission's write and the queue's other work: the embedded backend
//! stores a submission without the lock that every run's end and claim
//! takes, so a large batch being written holds up no worker; a cancel or a
//! read that meets a task stored but not yet queued waits for it. A real
//! sled store (durable) under a wrapper that holds each insert open once
//! it is written.

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use wpool::backend::{Backend, Cancelled, Completed, EmbeddedBackend, Enqueued};
use wpool::store::{
    Inserted, SledOptions, SledStore, StateCounts, Store, StoredModule, TaskFilter,
};
use wpool::task::{Millis, Payload, Slot};
use wpool::{ModuleHash, ModuleSettings, Outcome, TaskId, TaskRecord, TaskState};
use wpool_test_artifacts as programs;

use crate::util::{ran, read, task};

const TTL: Duration = Duration::from_secs(30);

/// Long enough for anything that is not held up to happen.
const PATIENCE: Duration = Duration::from_secs(20);

/// Where an insert held by [`Holding`] is.
#[derive(Debug, Default, PartialEq)]
enum Gate {
    /// Inserts pass.
    #[default]
    Open,
    /// The next insert is held once written.
    Armed,
    /// An insert is written and held.
    Holding,
}

/// A store whose inserts, while the gate is armed, are held once the inner
/// store has written them, until the test opens the gate: the moment
/// between a submission's write and its tasks being queued, made long.
#[derive(Debug)]
struct Holding {
    inner: Arc<SledStore>,
    gate: Mutex<Gate>,
    moved: Condvar,
}

impl Holding {
    fn lock(&self) -> std::sync::MutexGuard<'_, Gate> {
        self.gate.lock().unwrap()
    }

    fn arm(&self) {
        *self.lock() = Gate::Armed;
    }

    /// Waits until an insert is held.
    fn until_holding(&self) {
        let gate = self.lock();
        let (gate, timeout) = self
            .moved
            .wait_timeout_while(gate, PATIENCE, |g| *g != Gate::Holding)
            .unwrap();
        assert!(!timeout.timed_out(), "no insert came to be held: {gate:?}");
    }

    fn open(&self) {
        *self.lock() = Gate::Open;
        self.moved.notify_all();
    }
}

#[async_trait::async_trait]
impl Store for Holding {
    fn insert(&self, tasks: &[TaskRecord]) -> wpool::Result<Vec<Inserted>> {
        let inserted = self.inner.insert(tasks)?;
        let mut gate = self.lock();
        if *gate == Gate::Armed {
            *gate = Gate::Holding;
            self.moved.notify_all();
            drop(
                self.moved
                    .wait_while(gate, |g| *g == Gate::Holding)
                    .unwrap(),
            );
        }
        Ok(inserted)
    }

    fn put_module(&self, hash: &ModuleHash, bytes: &[u8]) -> wpool::Result<()> {
        self.inner.put_module(hash, bytes)
    }
    fn module(&self, hash: &ModuleHash) -> wpool::Result<Option<Vec<u8>>> {
        self.inner.module(hash)
    }
    fn modules(&self) -> wpool::Result<Vec<StoredModule>> {
        self.inner.modules()
    }
    fn delete_module(&self, hash: &ModuleHash) -> wpool::Result<bool> {
        self.inner.delete_module(hash)
    }
    fn next_seq(&self) -> wpool::Result<u64> {
        self.inner.next_seq()
    }
    fn update(&self, task: &TaskRecord, expected: TaskState) -> wpool::Result<bool> {
        self.inner.update(task, expected)
    }
    fn get(&self, id: &TaskId) -> wpool::Result<Option<TaskRecord>> {
        self.inner.get(id)
    }
    fn by_key(&self, key: &str) -> wpool::Result<Option<TaskId>> {
        self.inner.by_key(key)
    }
    fn list(&self, filter: &TaskFilter) -> wpool::Result<Vec<TaskRecord>> {
        self.inner.list(filter)
    }
    fn unfinished(&self) -> wpool::Result<Vec<TaskRecord>> {
        self.inner.unfinished()
    }
    fn module_in_use(&self, module: &ModuleHash) -> wpool::Result<bool> {
        self.inner.module_in_use(module)
    }
    fn counts(&self) -> wpool::Result<StateCounts> {
        self.inner.counts()
    }
    fn purge_finished(&self, before: Millis, keep: Option<u64>) -> wpool::Result<u64> {
        self.inner.purge_finished(before, keep)
    }
    fn remove_finished(&self, ids: &[TaskId]) -> wpool::Result<Vec<TaskId>> {
        self.inner.remove_finished(ids)
    }
    fn put_module_settings(
        &self,
        hash: &ModuleHash,
        settings: &ModuleSettings,
    ) -> wpool::Result<()> {
        self.inner.put_module_settings(hash, settings)
    }
    fn module_settings(&self, hash: &ModuleHash) -> wpool::Result<Option<ModuleSettings>> {
        self.inner.module_settings(hash)
    }
    fn keep_payload(
        &self,
        task: &TaskId,
        slot: Slot,
        token: u64,
        bytes: Vec<u8>,
    ) -> wpool::Result<Payload> {
        self.inner.keep_payload(task, slot, token, bytes)
    }
    fn discard_payload(&self, task: &TaskId, slot: Slot, payload: &Payload) -> wpool::Result<()> {
        self.inner.discard_payload(task, slot, payload)
    }
    fn read_payload(&self, task: &TaskId, slot: Slot, payload: &Payload) -> wpool::Result<Vec<u8>> {
        self.inner.read_payload(task, slot, payload)
    }
    fn payload_file(&self, task: &TaskId, slot: Slot, payload: &Payload) -> Option<PathBuf> {
        self.inner.payload_file(task, slot, payload)
    }
    async fn flush(&self) -> wpool::Result<()> {
        self.inner.flush().await
    }
    fn flush_blocking(&self) -> wpool::Result<()> {
        self.inner.flush_blocking()
    }
    fn is_durable(&self) -> bool {
        self.inner.is_durable()
    }
}

/// While a submission's write is held between the store and the queue, a
/// run's end is recorded (it would wait for the submission's whole write
/// if that held the queue's lock), and a cancel and a read of one of the
/// submission's tasks wait for it rather than fail or answer early; once
/// it is let go, everything is as if it had never been held.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_submission_being_written_holds_up_no_run_s_end() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Holding {
        inner: Arc::new(SledStore::open(dir.path(), &SledOptions::new()).unwrap()),
        gate: Mutex::new(Gate::Open),
        moved: Condvar::new(),
    });
    assert!(store.is_durable());
    let backend: Arc<dyn Backend> = Arc::new(EmbeddedBackend::open(store.clone()).unwrap());
    let wasm = read(programs::P1_TRIVIAL);
    let module = ModuleHash::of(&wasm);
    backend.put_module(&module, &wasm).await.unwrap();

    // A task running.
    let first = task(module, |s| s);
    backend.enqueue(vec![first.clone()]).await.unwrap();
    let (claimed, lease) = backend.claim(1, TTL).await.unwrap().claimed.remove(0);
    assert_eq!(claimed.id, first.id);

    // A submission of two, held once written.
    store.arm();
    let (b, c) = (task(module, |s| s), task(module, |s| s));
    let submission = {
        let backend = backend.clone();
        let tasks = vec![b.clone(), c.clone()];
        // Its own thread: the held insert blocks the thread it runs on.
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(backend.enqueue(tasks))
        })
    };
    tokio::task::spawn_blocking({
        let store = store.clone();
        move || store.until_holding()
    })
    .await
    .unwrap();

    // The run's end goes through meanwhile. (Were it held up, the gate is
    // opened before failing, so that nothing is left blocked.)
    let mut end = tokio::spawn({
        let backend = backend.clone();
        async move { backend.complete(&lease, ran(Outcome::Success)).await }
    });
    let Ok(ended) = tokio::time::timeout(PATIENCE, &mut end).await else {
        store.open();
        panic!("a run's end waited for a submission's write");
    };
    let ended = ended.unwrap().unwrap();
    let Completed::Recorded(ended) = ended else {
        panic!("the run's end was refused: {ended:?}");
    };
    assert_eq!(ended.state, TaskState::Succeeded);

    // A cancel and a read of the held tasks wait for the submission.
    let cancel = tokio::spawn({
        let backend = backend.clone();
        let id = b.id;
        async move { backend.cancel(&id).await }
    });
    let read = tokio::spawn({
        let backend = backend.clone();
        let id = c.id;
        async move { backend.get(&id).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let early = (cancel.is_finished(), read.is_finished());
    if early != (false, false) {
        store.open();
    }
    assert!(!early.0, "a cancel answered before the task was queued");
    assert!(
        !early.1,
        "a read answered before the submission was counted"
    );

    store.open();
    let answers = submission.join().unwrap().unwrap();
    assert!(
        matches!(answers.as_slice(), [Enqueued::New(_), Enqueued::New(_)]),
        "{answers:?}"
    );
    let cancelled = tokio::time::timeout(PATIENCE, cancel)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Cancelled::Cancelled(cancelled) = cancelled else {
        panic!("the task held in its submission was not cancelled: {cancelled:?}");
    };
    assert_eq!(cancelled.id, b.id);
    assert_eq!(cancelled.state, TaskState::Cancelled);
    let read = tokio::time::timeout(PATIENCE, read)
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .expect("the task read is stored");
    assert_eq!(read.id, c.id);
    assert_eq!(read.state, TaskState::Queued);

    // Queued as submitted: the cancelled one is not claimed, the other is.
    let claim = backend.claim(2, TTL).await.unwrap();
    let claimed: Vec<TaskId> = claim.claimed.iter().map(|(r, _)| r.id).collect();
    assert_eq!(claimed, vec![c.id]);
    let counts = backend.counts().await.unwrap();
    assert_eq!(counts.get(TaskState::Succeeded), 1);
    assert_eq!(counts.get(TaskState::Cancelled), 1);
    assert_eq!(counts.get(TaskState::Running), 1);
    assert_eq!(counts.total(), 3);
}
