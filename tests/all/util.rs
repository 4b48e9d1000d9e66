//! Helpers shared by the integration tests.

use std::path::Path;
use std::time::Duration;

use wpool::{
    CompiledModule, EngineConfig, Execution, Executor, Job, LimitOverrides, Outcome, RunReport,
};

pub(crate) fn read(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"))
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
