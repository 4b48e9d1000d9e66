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

fn executor_with_artifacts(dir: &std::path::Path) -> wpool::Executor {
    let mut config = wpool::EngineConfig::new();
    config.workers(1).artifact_dir(dir);
    wpool::Executor::new(&config).unwrap()
}

fn run_registered(executor: &wpool::Executor, module: &wpool::CompiledModule, input: &[u8]) {
    let report = crate::util::spawn(executor, module, input, Default::default()).wait_blocking();
    assert!(
        report.outcome.is_success(),
        "{:?}: {}",
        report.outcome,
        report.log
    );
}

#[test]
fn a_module_registered_under_its_known_hash_is_loaded_from_its_artifact() {
    let dir = tempfile::tempdir().unwrap();
    let component = read(programs::P2_COMPONENT);
    let hash = wpool::ModuleHash::of(&component);
    let echo = br#"{"op":"echo","text":"known"}"#;

    let executor = executor_with_artifacts(dir.path());
    // Nothing on disk: the bytes are checked against the hash before they
    // are compiled, so a module is never kept under another's hash.
    let command = read(programs::P1_ECHO);
    let err = executor.register_known(&hash, &command).unwrap_err();
    assert!(err.to_string().contains("are those of module"), "{err}");
    assert_eq!(executor.compilations(), 0);
    let module = executor.register_known(&hash, &component).unwrap();
    assert_eq!(module.hash(), hash);
    run_registered(&executor, &module, echo);
    assert_eq!(executor.compilations(), 1);
    drop(executor);

    // After a restart: loaded from the artifact (mapped), not compiled.
    let executor = executor_with_artifacts(dir.path());
    let module = executor.register_known(&hash, &component).unwrap();
    assert_eq!(module.hash(), hash);
    run_registered(&executor, &module, echo);
    run_registered(&executor, &module, echo);
    assert_eq!((executor.compilations(), executor.cache_loads()), (0, 1));
    let stats = executor.artifact_stats().unwrap();
    assert_eq!((stats.hits, stats.rejected), (1, 0));
    // Registering again by bytes finds it in memory.
    assert_eq!(executor.register(&component).unwrap().hash(), hash);
    assert_eq!(executor.cache_loads(), 1);
}

#[test]
fn a_truncated_or_damaged_artifact_is_compiled_again_never_mapped() {
    let dir = tempfile::tempdir().unwrap();
    let command = read(programs::P1_ECHO);
    let component = read(programs::P2_COMPONENT);
    let echo = br#"{"op":"echo","text":"cached"}"#;
    let executor = executor_with_artifacts(dir.path());
    run_registered(&executor, &executor.register(&command).unwrap(), b"x");
    run_registered(&executor, &executor.register(&component).unwrap(), echo);
    drop(executor);

    type Damage = fn(&mut Vec<u8>);
    let damages: [(&str, Damage); 4] = [
        ("cut in half", |b| b.truncate(b.len() / 2)),
        ("its trailer cut off", |b| b.truncate(b.len() - 48)),
        ("a page inverted", |b| {
            let at = b.len() / 3;
            b[at..at + 4096].iter_mut().for_each(|x| *x = !*x);
        }),
        ("empty", |b| b.clear()),
    ];
    for (what, damage) in damages {
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            let mut bytes = std::fs::read(&path).unwrap();
            damage(&mut bytes);
            std::fs::write(&path, bytes).unwrap();
        }
        let executor = executor_with_artifacts(dir.path());
        run_registered(&executor, &executor.register(&command).unwrap(), b"y");
        let hash = wpool::ModuleHash::of(&component);
        run_registered(
            &executor,
            &executor.register_known(&hash, &component).unwrap(),
            echo,
        );
        assert_eq!(executor.compilations(), 2, "{what}: both rebuilt");
        assert_eq!(executor.cache_loads(), 0, "{what}");
        assert_eq!(executor.artifact_stats().unwrap().rejected, 2, "{what}");
    }
}
