//! Helpers shared by the integration tests.

use std::path::Path;
use std::time::Duration;

use wpool::backend::{
    Backend, Cancelled, Claim, Completed, EmbeddedBackend, Enqueued, LeaseState, Tick,
};
use wpool::{
    CompiledModule, Completion, EngineConfig, Execution, Executor, Job, LimitOverrides, Limits,
    ModuleHash, Outcome, RunReport, TaskId, TaskRecord, TaskSpec, now_millis,
};

pub(crate) fn read(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A task of `module` (input `{}`) as submitted now, its spec as `spec`
/// makes it: for tests that call a backend directly.
pub(crate) fn task(module: ModuleHash, spec: impl FnOnce(TaskSpec) -> TaskSpec) -> TaskRecord {
    let spec = spec(TaskSpec::new(module, b"{}".to_vec()));
    TaskRecord::new(spec, module, Limits::default(), now_millis())
}

/// The end of a run with `outcome` (output `out`), as a backend records it.
pub(crate) fn ran(outcome: Outcome) -> Completion {
    Completion {
        outcome,
        output: b"out".to_vec().into(),
        log: String::new(),
        progress: None,
        duration_us: 10,
        fuel_consumed: Some(1),
        started_at: now_millis(),
        at: now_millis(),
    }
}

pub(crate) fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/all/fixtures")
        .join(name);
    wat::parse_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub(crate) fn executor(workers: usize) -> Executor {
    let mut config = EngineConfig::new();
    config.workers(workers);
    Executor::new(&config).expect("executor")
}

pub(crate) fn spawn(
    executor: &Executor,
    module: &CompiledModule,
    input: &[u8],
    overrides: LimitOverrides,
) -> Execution {
    let limits = executor.limits(&overrides).expect("limits");
    executor.spawn(Job {
        module: module.clone(),
        input: input.to_vec(),
        limits,
        on_progress: None,
        env: Vec::new(),
    })
}

pub(crate) fn run(
    executor: &Executor,
    path: &str,
    input: &[u8],
    overrides: LimitOverrides,
) -> RunReport {
    run_wasm(executor, &read(path), input, overrides)
}

pub(crate) fn run_wasm(
    executor: &Executor,
    wasm: &[u8],
    input: &[u8],
    overrides: LimitOverrides,
) -> RunReport {
    let module = executor.register(wasm).expect("register");
    spawn(executor, &module, input, overrides).wait_blocking()
}

pub(crate) fn timeout(d: Duration) -> LimitOverrides {
    LimitOverrides {
        timeout: Some(d),
        ..Default::default()
    }
}

/// Runs an ordinary task and checks its result: the pool is still healthy.
pub(crate) fn assert_healthy(executor: &Executor) {
    let report = run(
        executor,
        wpool_test_artifacts::P1_ECHO,
        b"still alive",
        LimitOverrides::default(),
    );
    assert_eq!(report.outcome, Outcome::Success, "log: {}", report.log);
    assert_eq!(report.output, b"still alive");
}

/// What a test changes or notes of a [`Hooked`] backend's calls; each
/// hook does by default what the backend does.
#[async_trait::async_trait]
pub(crate) trait Hooks: Send + Sync + std::fmt::Debug + 'static {
    /// The answer of a run's end recorded with its flush
    /// (`complete_and_claim`, and `complete`, which the pool calls through
    /// it): the backend's, or another.
    fn completed(
        &self,
        _lease: &wpool::Lease,
        answer: wpool::Result<(Completed, Claim)>,
    ) -> wpool::Result<(Completed, Claim)> {
        answer
    }

    /// The answer of a run's end written without its flush: the
    /// backend's, or another.
    fn completed_unflushed(
        &self,
        _lease: &wpool::Lease,
        answer: wpool::Result<Completed>,
    ) -> wpool::Result<Completed> {
        answer
    }

    /// A flush the pool asked for.
    async fn flush(&self, inner: &EmbeddedBackend) -> wpool::Result<()> {
        inner.flush().await
    }
}

/// An embedded backend with a test's [`Hooks`] on some of its calls; the
/// others go straight to it. A test about what the pool does with a
/// backend's answers: the backend itself is the real one.
#[derive(Debug)]
pub(crate) struct Hooked<H> {
    pub(crate) inner: EmbeddedBackend,
    pub(crate) hooks: H,
}

#[async_trait::async_trait]
impl<H: Hooks> Backend for Hooked<H> {
    async fn put_module(&self, hash: &ModuleHash, bytes: &[u8]) -> wpool::Result<()> {
        self.inner.put_module(hash, bytes).await
    }
    async fn module(&self, hash: &ModuleHash) -> wpool::Result<Option<Vec<u8>>> {
        self.inner.module(hash).await
    }
    async fn modules(&self) -> wpool::Result<Vec<wpool::store::StoredModule>> {
        self.inner.modules().await
    }
    async fn delete_module(&self, hash: &ModuleHash) -> wpool::Result<bool> {
        self.inner.delete_module(hash).await
    }
    async fn put_module_settings(
        &self,
        hash: &ModuleHash,
        settings: &wpool::ModuleSettings,
    ) -> wpool::Result<()> {
        self.inner.put_module_settings(hash, settings).await
    }
    async fn module_settings(
        &self,
        hash: &ModuleHash,
    ) -> wpool::Result<Option<wpool::ModuleSettings>> {
        self.inner.module_settings(hash).await
    }
    async fn enqueue(&self, tasks: Vec<TaskRecord>) -> wpool::Result<Vec<Enqueued>> {
        self.inner.enqueue(tasks).await
    }
    async fn enqueue_one(&self, task: Box<TaskRecord>) -> wpool::Result<Enqueued> {
        self.inner.enqueue_one(task).await
    }
    async fn claim(&self, max: usize, ttl: Duration) -> wpool::Result<Claim> {
        self.inner.claim(max, ttl).await
    }
    async fn claim_ahead(&self, max: usize, ahead: usize, ttl: Duration) -> wpool::Result<Claim> {
        self.inner.claim_ahead(max, ahead, ttl).await
    }
    async fn renew(
        &self,
        leases: &[wpool::Lease],
        ttl: Duration,
    ) -> wpool::Result<Vec<LeaseState>> {
        self.inner.renew(leases, ttl).await
    }
    async fn complete(
        &self,
        lease: &wpool::Lease,
        run: wpool::Completion,
    ) -> wpool::Result<Completed> {
        Ok(self
            .complete_and_claim(lease, run, 0, Duration::ZERO)
            .await?
            .0)
    }
    async fn complete_and_claim(
        &self,
        lease: &wpool::Lease,
        run: wpool::Completion,
        max: usize,
        ttl: Duration,
    ) -> wpool::Result<(Completed, Claim)> {
        let answer = self.inner.complete_and_claim(lease, run, max, ttl).await;
        self.hooks.completed(lease, answer)
    }
    fn completes_with_claim(&self) -> bool {
        self.inner.completes_with_claim()
    }
    async fn complete_unflushed(
        &self,
        lease: &wpool::Lease,
        run: wpool::Completion,
    ) -> wpool::Result<Completed> {
        let answer = self.inner.complete_unflushed(lease, run).await;
        self.hooks.completed_unflushed(lease, answer)
    }
    fn completes_unflushed(&self) -> bool {
        self.inner.completes_unflushed()
    }
    async fn release(&self, lease: &wpool::Lease) -> wpool::Result<bool> {
        self.inner.release(lease).await
    }
    async fn expire_leases(&self) -> wpool::Result<Vec<TaskRecord>> {
        self.inner.expire_leases().await
    }
    async fn tick(&self) -> wpool::Result<Tick> {
        self.inner.tick().await
    }
    async fn cancel(&self, id: &TaskId) -> wpool::Result<Cancelled> {
        self.inner.cancel(id).await
    }
    async fn get(&self, id: &TaskId) -> wpool::Result<Option<TaskRecord>> {
        self.inner.get(id).await
    }
    async fn get_final(&self, id: &TaskId) -> wpool::Result<Option<Box<TaskRecord>>> {
        self.inner.get_final(id).await
    }
    fn known_unfinished(&self, id: &TaskId) -> bool {
        self.inner.known_unfinished(id)
    }
    fn cancel_requested(&self, id: &TaskId) -> bool {
        self.inner.cancel_requested(id)
    }
    async fn by_key(&self, key: &str) -> wpool::Result<Option<TaskId>> {
        self.inner.by_key(key).await
    }
    async fn list(&self, filter: &wpool::store::TaskFilter) -> wpool::Result<Vec<TaskRecord>> {
        self.inner.list(filter).await
    }
    async fn counts(&self) -> wpool::Result<wpool::store::StateCounts> {
        self.inner.counts().await
    }
    async fn purge_finished(&self, before: u64, keep: Option<u64>) -> wpool::Result<u64> {
        self.inner.purge_finished(before, keep).await
    }
    async fn delete_finished(&self, ids: &[TaskId]) -> wpool::Result<Vec<TaskId>> {
        self.inner.delete_finished(ids).await
    }
    async fn gc_modules(&self) -> wpool::Result<u64> {
        self.inner.gc_modules().await
    }
    async fn flush(&self) -> wpool::Result<()> {
        self.hooks.flush(&self.inner).await
    }
    fn is_durable(&self) -> bool {
        self.inner.is_durable()
    }
}
