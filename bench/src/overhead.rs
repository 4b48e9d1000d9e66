//! The pool's own overhead: a task that does nothing, through the raw
//! wasmtime loop, the executor and the `Pool`.
//!
//! For instruction counts (`valgrind --tool=callgrind`), one of the three
//! can be run alone for a fixed number of tasks:
//!
//! ```sh
//! WPOOL_BENCH_OVERHEAD=executor:1:2000 \
//!     valgrind --tool=callgrind target/release/wpool-bench --only overhead
//! ```
//!
//! (`raw`, `executor`, `pool`, `pool-close`, `pool-each` (each task
//! submitted once the one before it has ended, so that its result always
//! goes to a waiter) or `pool-paused` (all submitted with the pool paused,
//! timed from its resume: the workers with no submitter beside them),
//! then workers, then tasks, and optionally
//! the epoch tick in milliseconds: under callgrind a task takes some 50
//! times longer, and a 1 ms tick would interrupt most of them, which it
//! does not outside); the difference of two such runs with different task
//! counts, divided by the difference of the counts, is the cost of one
//! task without the setup.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use wasmtime::{Linker, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};
use wpool::{
    EngineConfig, Executor, Job, LimitOverrides, Limits, ModuleHash, Pool, PoolConfig, TaskSpec,
};
use wpool_test_artifacts as programs;

use crate::rows::{median_bracketed, read};
use crate::{Row, Scale};

/// The environment variable that runs one measurement alone (see the
/// module docs).
const ALONE: &str = "WPOOL_BENCH_OVERHEAD";

/// How long, or how many tasks, a raw loop runs.
#[derive(Clone, Copy, Debug)]
enum Until {
    Elapsed(Duration),
    Tasks(u64),
}

/// The store data of the raw loop: the WASI context and the memory limit.
struct RawState {
    wasi: WasiP1Ctx,
    limits: StoreLimits,
}

/// The raw wasmtime limit: threads in a tight loop of new store + WASI
/// context + instantiate + call, with the pool's own engine configuration,
/// no queue, no scheduler. Returns tasks per second.
///
/// It does what any host must do to run the task under wpool's default
/// limits, and nothing else:
/// - the input on stdin, stdout and stderr captured, and the output taken
///   out afterwards (a host hands it to someone);
/// - fuel set (the engine meters it) and an epoch deadline at the
///   timeout;
/// - an epoch ticker thread at wpool's tick (1 ms), without which the
///   epoch deadline would never fire;
/// - the task's memory limit as a store limiter.
fn raw_wasmtime(wasm: &[u8], threads: usize, until: Until, tick: Duration) -> f64 {
    let mut config = engine_config(threads, true);
    config.epoch_tick(tick);
    let engine = wasmtime::Engine::new(&config.wasmtime_config().unwrap()).unwrap();
    let module = wasmtime::Module::new(&engine, wasm).unwrap();
    let mut linker: Linker<RawState> = Linker::new(&engine);
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |s| &mut s.wasi).unwrap();
    let pre = Arc::new(linker.instantiate_pre(&module).unwrap());
    let defaults = Limits::default();
    let timeout_ticks = (defaults.timeout.as_nanos() / tick.as_nanos()).max(1) as u64;
    let memory = usize::try_from(defaults.memory).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let ticker = {
        let engine = engine.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(tick);
                engine.increment_epoch();
            }
        })
    };
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let engine = engine.clone();
            let pre = pre.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                let done = |n: u64| match until {
                    Until::Elapsed(window) => started.elapsed() >= window,
                    Until::Tasks(count) => n * threads as u64 >= count,
                };
                while !done(n) {
                    let stdout = MemoryOutputPipe::new(1 << 20);
                    let wasi = WasiCtxBuilder::new()
                        .stdin(MemoryInputPipe::new(&b""[..]))
                        .stdout(stdout.clone())
                        .stderr(MemoryOutputPipe::new(1 << 16))
                        .build_p1();
                    let limits = StoreLimitsBuilder::new().memory_size(memory).build();
                    let mut store = Store::new(&engine, RawState { wasi, limits });
                    store.limiter(|s| &mut s.limits);
                    store.set_fuel(u64::MAX).unwrap();
                    store.set_epoch_deadline(timeout_ticks);
                    let instance = pre.instantiate(&mut store).unwrap();
                    let start = instance
                        .get_typed_func::<(), ()>(&mut store, "_start")
                        .unwrap();
                    start.call(&mut store, ()).unwrap();
                    drop(store);
                    std::hint::black_box(stdout.contents());
                    n += 1;
                }
                n
            })
        })
        .collect();
    let total: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    let rate = total as f64 / started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    ticker.join().unwrap();
    rate
}

/// Tasks per second through the executor's workers (no scheduler).
fn executor_rate(wasm: &[u8], workers: usize, count: usize, tick: Duration) -> f64 {
    let mut config = engine_config(workers, true);
    config.epoch_tick(tick);
    let executor = Executor::new(&config).unwrap();
    let module = executor.register(wasm).unwrap();
    let limits = executor.limits(&LimitOverrides::default()).unwrap();
    let started = Instant::now();
    let runs: Vec<_> = (0..count)
        .map(|_| {
            executor.spawn(Job {
                module: module.clone(),
                input: Vec::new(),
                limits: limits.clone(),
                on_progress: None,
                env: Vec::new(),
            })
        })
        .collect();
    for run in runs {
        assert!(run.wait_blocking().outcome.is_success());
    }
    count as f64 / started.elapsed().as_secs_f64()
}

/// Registers a module from outside async code.
pub(crate) fn register(pool: &Pool, wasm: &[u8]) -> wpool::Result<ModuleHash> {
    pool.executor().handle().block_on(pool.register(wasm))
}

/// Tasks per second through the `Pool` (in-memory store), each result
/// awaited in turn by a caller on a runtime of its own.
pub(crate) fn pool_rate(pool: &Pool, wasm: &[u8], count: usize, input: &[u8]) -> f64 {
    submit_and_finish(pool, wasm, count, input, Finish::AwaitEach)
}

/// Tasks per second through the `Pool` (in-memory store) when nobody
/// waits for each result: submit them all, then [`Pool::close`], which
/// returns once every one has run (the results are stored; they are
/// checked afterwards, outside the time). The difference from
/// [`pool_rate`] is what handing the results to a caller waiting on
/// another thread costs: waking that thread, once per batch of results.
fn pool_close_rate(pool: &Pool, wasm: &[u8], count: usize) -> f64 {
    submit_and_finish(pool, wasm, count, b"", Finish::Close)
}

/// How [`submit_and_finish`] learns that its tasks have run.
#[derive(Clone, Copy, PartialEq)]
enum Finish {
    /// Each task's result awaited in turn.
    AwaitEach,
    /// [`Pool::close`], then the results read.
    Close,
    /// Each task submitted once the one before it has ended and its
    /// result was awaited: a waiter is always there at a task's end.
    EachInTurn,
    /// All submitted with the pool paused, then each result awaited in
    /// turn, timed from the pool's resume: the workers' rate with no
    /// submitter writing the queue beside them, which `AwaitEach` has.
    Paused,
}

/// Submits `count` tasks from a caller on a runtime of its own, then
/// waits for them as `finish` says; tasks per second, every result checked.
fn submit_and_finish(pool: &Pool, wasm: &[u8], count: usize, input: &[u8], finish: Finish) -> f64 {
    let hash = register(pool, wasm).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut started = Instant::now();
        if finish == Finish::EachInTurn {
            for _ in 0..count {
                let handle = pool
                    .submit(TaskSpec::new(hash, input.to_vec()))
                    .await
                    .unwrap();
                let result = handle.wait().await.unwrap();
                assert!(result.is_success(), "{:?}", result.outcome);
            }
            return count as f64 / started.elapsed().as_secs_f64();
        }
        if finish == Finish::Paused {
            pool.pause();
        }
        let mut handles = Vec::with_capacity(count);
        for _ in 0..count {
            handles.push(
                pool.submit(TaskSpec::new(hash, input.to_vec()))
                    .await
                    .unwrap(),
            );
        }
        if finish == Finish::Paused {
            started = Instant::now();
            pool.resume();
        }
        if finish == Finish::AwaitEach || finish == Finish::Paused {
            for handle in handles {
                let result = handle.wait().await.unwrap();
                assert!(result.is_success(), "{:?}", result.outcome);
            }
            return count as f64 / started.elapsed().as_secs_f64();
        }
        pool.close().await.unwrap();
        let rate = count as f64 / started.elapsed().as_secs_f64();
        for handle in handles {
            let result = pool
                .result(handle.id())
                .await
                .unwrap()
                .expect("a task did not run");
            assert!(result.is_success(), "{:?}", result.outcome);
        }
        rate
    })
}

fn new_pool(workers: usize, tick: Duration) -> Result<Pool, Box<dyn std::error::Error>> {
    let mut config = PoolConfig::new();
    config.workers(workers);
    config.engine_mut().epoch_tick(tick);
    if ALONE_SLIM.load(Ordering::Relaxed) {
        config.engine_mut().instances_per_task(1);
    }
    Ok(Pool::new(config)?)
}

/// Set when one measurement runs alone (under valgrind): one instance per
/// task, since valgrind cannot reserve the address space of 32 memory
/// slots. A command module uses one; the per-task work is the same.
static ALONE_SLIM: AtomicBool = AtomicBool::new(false);

/// The engine configuration of the executor and the raw loop: the pool's
/// defaults with `workers` workers.
fn engine_config(workers: usize, fuel: bool) -> EngineConfig {
    let mut config = EngineConfig::new();
    config.workers(workers).fuel_metering(fuel);
    if ALONE_SLIM.load(Ordering::Relaxed) {
        config.instances_per_task(1);
    }
    config
}

/// One measurement alone, as `WPOOL_BENCH_OVERHEAD` says (`WHAT:WORKERS:TASKS`).
fn alone(spec: &str, wasm: &[u8]) -> Result<Vec<Row>, Box<dyn std::error::Error>> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (what, workers, tasks, tick) = match parts[..] {
        [what, workers, tasks] => (what, workers, tasks, "1"),
        [what, workers, tasks, tick] => (what, workers, tasks, tick),
        _ => return Err(format!("{ALONE}: WHAT:WORKERS:TASKS[:TICK_MS], not `{spec}`").into()),
    };
    let workers: usize = workers.parse()?;
    let tasks: usize = tasks.parse()?;
    let tick = Duration::from_millis(tick.parse()?);
    ALONE_SLIM.store(true, Ordering::Relaxed);
    let rate = match what {
        "raw" => raw_wasmtime(wasm, workers, Until::Tasks(tasks as u64), tick),
        "executor" => executor_rate(wasm, workers, tasks, tick),
        "pool" => pool_rate(&new_pool(workers, tick)?, wasm, tasks, b""),
        "pool-close" => pool_close_rate(&new_pool(workers, tick)?, wasm, tasks),
        "pool-paused" => {
            submit_and_finish(&new_pool(workers, tick)?, wasm, tasks, b"", Finish::Paused)
        }
        "pool-each" => submit_and_finish(
            &new_pool(workers, tick)?,
            wasm,
            tasks,
            b"",
            Finish::EachInTurn,
        ),
        other => {
            return Err(format!(
                "{ALONE}: raw, executor, pool, pool-close, pool-each or pool-paused, not `{other}`"
            )
            .into());
        }
    };
    Ok(vec![Row::new(
        &format!("trivial task, {what} alone, {workers} worker(s), {tasks} tasks"),
        "tasks/s",
        rate,
        "itself (alone: no baseline)",
        rate,
        "for instruction counts",
    )])
}

pub(crate) fn section(scale: Scale, cores: usize) -> Result<Vec<Row>, Box<dyn std::error::Error>> {
    let wasm = read(programs::P1_TRIVIAL);
    if let Ok(spec) = std::env::var(ALONE) {
        return alone(&spec, &wasm);
    }
    let count = scale.n(5_000, 50_000);
    // The machine's speed swings between runs a few seconds apart (the
    // raw loop on two threads has made 250k and 430k tasks/s within one
    // hour), so a baseline measured once, then each subject once after
    // it, can compare two different machines. Instead the subjects are
    // measured in turn, round after round, with the raw loop before and
    // after each of them; each row gives the round whose ratio to its
    // own raw loop is the median of the five, among the rounds in which
    // the raw loop held still around the subject (`median_bracketed`).
    let rounds = scale.n(1, 5);
    let window = scale.time(Duration::from_secs(2), Duration::from_millis(1500));
    let mut rows = Vec::new();
    for workers in [1, cores] {
        let tick = Duration::from_millis(1);
        let mut measured = Rounds::default();
        let raw = || raw_wasmtime(&wasm, workers, Until::Elapsed(window), tick);
        for _ in 0..rounds {
            // raw, executor, raw, Pool, raw, Pool with `close`, raw: each
            // subject between two measurements of the raw loop.
            let first = raw();
            measured
                .executor
                .push(executor_rate(&wasm, workers, count, tick));
            let second = raw();
            measured
                .pooled
                .push(pool_rate(&new_pool(workers, tick)?, &wasm, count, b""));
            let third = raw();
            measured
                .closed
                .push(pool_close_rate(&new_pool(workers, tick)?, &wasm, count));
            measured.raw.push([first, second, third, raw()]);
        }
        // Subject `i` ran between the raw loop's measurements `i` and
        // `i + 1` of each round.
        for (i, subject, rates, note) in [
            (
                0,
                format!("trivial task, executor, {workers} worker(s)"),
                &measured.executor,
                "",
            ),
            (
                1,
                format!("trivial task, Pool (memory store), {workers} worker(s)"),
                &measured.pooled,
                "",
            ),
            (
                2,
                format!("trivial task, Pool, results not awaited one by one, {workers} worker(s)"),
                &measured.closed,
                "submit all, then close; ",
            ),
        ] {
            let before: Vec<f64> = measured.raw.iter().map(|r| r[i]).collect();
            let after: Vec<f64> = measured.raw.iter().map(|r| r[i + 1]).collect();
            let (rate, raw, rounds) = median_bracketed(rates, &before, &after);
            rows.push(Row::new(
                &subject,
                "tasks/s",
                rate,
                "raw wasmtime loop",
                raw,
                &format!(
                    "{note}{:.1} µs/task vs {:.1}; {rounds}",
                    1e6 / rate,
                    1e6 / raw
                ),
            ));
        }
    }
    Ok(rows)
}

/// The rates of each round of [`section`], in tasks per second.
#[derive(Default)]
struct Rounds {
    /// The raw loop's four measurements of each round: before the
    /// executor, between it and the Pool, between the Pool and the Pool
    /// with `close`, and after that.
    raw: Vec<[f64; 4]>,
    executor: Vec<f64>,
    pooled: Vec<f64>,
    closed: Vec<f64>,
}
