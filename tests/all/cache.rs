//! Compiled modules survive a restart: the artifact cache of a data
//! directory, wired into the pool.

use std::time::Duration;

use wpool::{Pool, PoolConfig, TaskSpec, TaskState};
use wpool_test_artifacts as programs;

use crate::util::read;

fn config(fuel: bool) -> PoolConfig {
    let mut config = PoolConfig::new();
    config.workers(1);
    config.engine_mut().fuel_metering(fuel);
    config
}

fn run_once(pool: &Pool, wasm: &[u8], input: &[u8]) -> Vec<u8> {
    let hash = pool
        .executor()
        .handle()
        .block_on(pool.register(wasm))
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let result = runtime
        .block_on(async {
            pool.submit(TaskSpec::new(hash, input.to_vec()))
                .await?
                .wait()
                .await
        })
        .unwrap();
    assert_eq!(result.state, TaskState::Succeeded, "{}", result.log);
    result.output
}

#[test]
fn a_restart_loads_compiled_modules_instead_of_compiling() {
    let dir = tempfile::tempdir().unwrap();
    let command = read(programs::P1_ECHO);
    let component = read(programs::P2_COMPONENT);
    let echo = br#"{"op":"echo","text":"cached"}"#;

    let pool = Pool::open(config(true), dir.path()).unwrap();
    assert_eq!(run_once(&pool, &command, b"x"), b"x");
    run_once(&pool, &component, echo);
    assert_eq!(pool.executor().compilations(), 2);
    assert_eq!(pool.executor().cache_loads(), 0);
    drop(pool);

    let pool = Pool::open(config(true), dir.path()).unwrap();
    assert_eq!(run_once(&pool, &command, b"y"), b"y");
    run_once(&pool, &component, echo);
    assert_eq!(
        pool.executor().compilations(),
        0,
        "nothing compiled after the restart"
    );
    assert_eq!(pool.executor().cache_loads(), 2);
    drop(pool);

    // Another engine configuration (fuel off) never loads these artifacts:
    // it compiles and keeps its own.
    let pool = Pool::open(config(false), dir.path()).unwrap();
    assert_eq!(run_once(&pool, &command, b"z"), b"z");
    assert_eq!(pool.executor().compilations(), 1);
    assert_eq!(pool.executor().cache_loads(), 0);
}

#[test]
fn a_corrupted_artifact_is_rebuilt_not_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let command = read(programs::P1_ECHO);
    let pool = Pool::open(config(true), dir.path()).unwrap();
    run_once(&pool, &command, b"x");
    drop(pool);

    let artifacts = dir.path().join(wpool::ARTIFACTS_DIR);
    let mut flipped = 0;
    for entry in std::fs::read_dir(&artifacts).unwrap() {
        let path = entry.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x40;
        std::fs::write(&path, bytes).unwrap();
        flipped += 1;
    }
    assert_eq!(flipped, 1);

    let pool = Pool::open(config(true), dir.path()).unwrap();
    assert_eq!(run_once(&pool, &command, b"still fine"), b"still fine");
    assert_eq!(
        pool.executor().compilations(),
        1,
        "the bad artifact was rebuilt"
    );
    assert_eq!(pool.executor().cache_loads(), 0);
}

#[test]
fn tasks_recovered_after_a_restart_run_without_compiling() {
    let dir = tempfile::tempdir().unwrap();
    let pool = Pool::open(config(true), dir.path()).unwrap();
    let hash = pool
        .executor()
        .handle()
        .block_on(pool.register(&read(programs::P1_ECHO)))
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let id = runtime
        .block_on(
            pool.submit(TaskSpec::new(hash, b"after".to_vec()).delay(Duration::from_millis(300))),
        )
        .unwrap()
        .id();
    drop(pool);

    let pool = Pool::open(config(true), dir.path()).unwrap();
    let result = runtime.block_on(pool.wait(id)).unwrap();
    assert_eq!(result.output, b"after");
    assert_eq!(pool.executor().compilations(), 0);
    assert_eq!(pool.executor().cache_loads(), 1);
}
