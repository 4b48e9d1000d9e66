//! The durable rows: submissions and whole tasks on the sled store, durable
//! and relaxed, next to the memory store doing the same, by 64 single
//! submitters and by batches; and what a bare sled insert and flush cost,
//! the floor under them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wpool::store::{FlushStats, SledOptions, SledStore, SyncMode};
use wpool::{ModuleHash, Pool, PoolConfig, TaskSpec};
use wpool_test_artifacts as programs;

use crate::rows::{median_round, read, register, submitters, submitters_of, tempfile_dir};
use crate::threads::Threads;
use crate::{Row, Scale};

/// Single submitters, each with one task at a time.
const SUBMITTERS: usize = 64;
/// Tasks per batch in the batch rows.
const BATCH: usize = 500;
/// Batch submitters at once in the batch rows.
const BATCH_SUBMITTERS: usize = 4;
/// Rounds of the sled rows next to the memory store, in a full run.
const ROUNDS: usize = 3;

/// Tasks of each measurement of [`sled_next_to_memory`].
struct Counts {
    /// By the single submitters.
    single: usize,
    /// By batches.
    batch: usize,
    /// On PostgreSQL, by the single submitters.
    postgres: usize,
}

pub(crate) fn durable_submit(
    scale: Scale,
    cores: usize,
) -> Result<Vec<Row>, Box<dyn std::error::Error>> {
    // Fewer on PostgreSQL: every task is a commit, and the quick run
    // stays short.
    let counts = Counts {
        single: scale.n(4_000, 40_000),
        batch: scale.n(20_000, 200_000),
        postgres: scale.n(1_000, 10_000),
    };
    sled_next_to_memory(counts, scale.n(1, ROUNDS), cores, false)
}

pub(crate) fn durable_end_to_end(
    scale: Scale,
    cores: usize,
) -> Result<Vec<Row>, Box<dyn std::error::Error>> {
    if let Ok(spec) = std::env::var(ALONE) {
        return alone(&spec, cores);
    }
    let counts = Counts {
        single: scale.n(2_000, 20_000),
        batch: scale.n(10_000, 100_000),
        postgres: scale.n(500, 4_000),
    };
    sled_next_to_memory(counts, scale.n(1, ROUNDS), cores, true)
}

/// The environment variable that runs one end-to-end measurement alone,
/// for a profiler: `STORE:SUBMISSION:TASKS[:AHEAD[:BYTES]]`, with `STORE`
/// one of `memory`, `durable`, `relaxed`, `SUBMISSION` `single` or `batch`,
/// `AHEAD` the tasks claimed ahead (by default the store's default) and
/// `BYTES` the size of each task's input, echoed as its output (by
/// default none, and the trivial task).
const ALONE: &str = "WPOOL_BENCH_DURABLE";

/// One end-to-end measurement alone, as [`ALONE`] says.
fn alone(spec: &str, cores: usize) -> Result<Vec<Row>, Box<dyn std::error::Error>> {
    let usage = || format!("{ALONE}: STORE:SUBMISSION:TASKS[:AHEAD[:BYTES]], not `{spec}`");
    let parts: Vec<&str> = spec.split(':').collect();
    let (store, submission, tasks, ahead, bytes) = match parts[..] {
        [store, submission, tasks] => (store, submission, tasks, "default", "0"),
        [store, submission, tasks, ahead] => (store, submission, tasks, ahead, "0"),
        [store, submission, tasks, ahead, bytes] => (store, submission, tasks, ahead, bytes),
        _ => return Err(usage().into()),
    };
    let input = payload(bytes.parse()?);
    let submission = match submission {
        "single" => Submission::Single,
        "batch" => Submission::Batch,
        _ => return Err(usage().into()),
    };
    let tasks: usize = tasks.parse()?;
    let mut config = PoolConfig::new();
    config.workers(cores);
    if ahead != "default" {
        config.claim_ahead(ahead.parse()?);
    }
    // One instance per task, as the overhead section's measurement alone
    // does: under valgrind, the 32 memory slots' address space cannot be
    // reserved. A command module uses one; the per-task work is the same.
    config.engine_mut().instances_per_task(1);
    let wasm = read(if input.is_empty() {
        programs::P1_TRIVIAL
    } else {
        programs::P1_ECHO
    });
    let dir = tempfile_dir("durable");
    let (pool, sled) = match store {
        "memory" => (Pool::new(config)?, None),
        "durable" | "relaxed" => {
            let sync = match store {
                "durable" => SyncMode::Durable,
                _ => SyncMode::Relaxed {
                    interval: Duration::from_millis(100),
                },
            };
            let store = Arc::new(SledStore::open(&dir, SledOptions::new().sync(sync))?);
            (Pool::with_store(config, store.clone())?, Some(store))
        }
        _ => return Err(usage().into()),
    };
    let hash = register(&pool, &wasm)?;
    let before = sled.as_ref().map(|s| s.flush_stats());
    let threads = Threads::now();
    let rate = submission.rate_of(&pool, hash, &input, tasks, true);
    if let (Some(store), Some(before)) = (&sled, before) {
        print_flushes(spec, true, tasks, &before, &store.flush_stats());
    }
    if let Some(threads) = threads {
        threads.print_since(spec, tasks, cores);
    }
    drop(pool);
    drop(sled);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(vec![Row::new(
        &format!("end to end alone, {spec}"),
        "tasks/s",
        rate,
        "itself (alone: no baseline)",
        rate,
        "for profiles",
    )])
}

/// How the tasks of a row are submitted.
#[derive(Clone, Copy)]
enum Submission {
    /// [`SUBMITTERS`] submitters of one task at a time.
    Single,
    /// [`BATCH_SUBMITTERS`] submitters of [`BATCH`] tasks at a time.
    Batch,
}

impl Submission {
    fn rate(self, pool: &Pool, hash: ModuleHash, count: usize, wait: bool) -> f64 {
        self.rate_of(pool, hash, &[], count, wait)
    }

    /// [`Submission::rate`], each task given `input`.
    fn rate_of(self, pool: &Pool, hash: ModuleHash, input: &[u8], count: usize, wait: bool) -> f64 {
        match self {
            Submission::Single => submitters_of(pool, hash, input, count, SUBMITTERS, wait),
            Submission::Batch => batches(pool, hash, input, count, wait),
        }
    }

    fn who(self) -> String {
        match self {
            Submission::Single => format!("{SUBMITTERS} submitters"),
            Submission::Batch => format!("{BATCH_SUBMITTERS} × batches of {BATCH}"),
        }
    }
}

/// [`BATCH_SUBMITTERS`] concurrent submitters share `count` tasks, each
/// submitting [`BATCH`] at a time (`Pool::submit_many`) and, with `wait`,
/// waiting for all their results before the next batch. Tasks per second.
fn batches(pool: &Pool, hash: ModuleHash, input: &[u8], count: usize, wait: bool) -> f64 {
    let input: Arc<[u8]> = input.into();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let started = Instant::now();
        let rounds = (count / (BATCH_SUBMITTERS * BATCH)).max(1);
        let tasks: Vec<_> = (0..BATCH_SUBMITTERS)
            .map(|_| {
                let pool = pool.clone();
                let input = input.clone();
                tokio::spawn(async move {
                    for _ in 0..rounds {
                        let specs = (0..BATCH).map(|_| TaskSpec::new(hash, input.to_vec()));
                        let handles = pool.submit_many(specs).await.unwrap();
                        if wait {
                            let waits = handles.into_iter().map(|handle| {
                                let handle = handle.unwrap();
                                tokio::spawn(async move { handle.wait().await })
                            });
                            for waiting in waits.collect::<Vec<_>>() {
                                let result = waiting.await.unwrap().unwrap();
                                assert!(result.is_success(), "{:?}", result.outcome);
                            }
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        (rounds * BATCH_SUBMITTERS * BATCH) as f64 / started.elapsed().as_secs_f64()
    })
}

/// The sled store, durable and relaxed, next to the memory store:
/// submissions acknowledged, or (`wait`) tasks from submission to a result
/// a waiter was given; by single submitters (`count` tasks), then by
/// batches (`batch_count`). Then single submitters on PostgreSQL, next to
/// sled's durable figure.
///
/// The memory store, the durable and the relaxed sled store are measured
/// in turn, `rounds` times, and each sled row gives the round whose ratio
/// to the memory store of the same round is the median (as the
/// trivial-task rows do, and for the same reason: this machine's speed
/// swings within minutes, and one run of each could compare a fast
/// minute with a slow one).
fn sled_next_to_memory(
    counts: Counts,
    rounds: usize,
    cores: usize,
    wait: bool,
) -> Result<Vec<Row>, Box<dyn std::error::Error>> {
    let wasm = read(programs::P1_TRIVIAL);
    let mut config = PoolConfig::new();
    config.workers(cores);
    let mut rows = Vec::new();
    let mut durable = f64::NAN;
    let modes = [
        ("durable (group commit)", SyncMode::Durable),
        (
            "relaxed (log written every 100 ms)",
            SyncMode::Relaxed {
                interval: Duration::from_millis(100),
            },
        ),
    ];
    for (submission, count) in [
        (Submission::Single, counts.single),
        (Submission::Batch, counts.batch),
    ] {
        let mut memory = Vec::with_capacity(rounds);
        let mut sled: [Vec<f64>; 2] = Default::default();
        for round in 1..=rounds {
            let who = match rounds {
                1 => submission.who(),
                _ => format!("{}, round {round}", submission.who()),
            };
            memory.push({
                let pool = Pool::new(config.clone())?;
                let hash = register(&pool, &wasm)?;
                let threads = Threads::now();
                let rate = submission.rate(&pool, hash, count, wait);
                if let (Some(threads), true) = (threads, wait) {
                    threads.print_since(&format!("memory store, {who}"), count, cores);
                }
                rate
            });
            for ((name, sync), rates) in modes.iter().zip(&mut sled) {
                let dir = tempfile_dir("durable");
                let store = Arc::new(SledStore::open(&dir, SledOptions::new().sync(*sync))?);
                let pool = Pool::with_store(config.clone(), store.clone())?;
                let hash = register(&pool, &wasm)?;
                let before = store.flush_stats();
                let threads = Threads::now();
                let rate = submission.rate(&pool, hash, count, wait);
                let stats = store.flush_stats();
                if let (Some(threads), true) = (threads, wait) {
                    threads.print_since(&format!("sled, {name}, {who}"), count, cores);
                }
                drop(pool);
                drop(store);
                let _ = std::fs::remove_dir_all(&dir);
                if *sync == SyncMode::Durable {
                    print_flushes(&who, wait, count, &before, &stats);
                }
                rates.push(rate);
            }
        }
        for ((name, sync), rates) in modes.iter().zip(&sled) {
            let (rate, baseline, rounds) = median_round(rates, &memory);
            if *sync == SyncMode::Durable && matches!(submission, Submission::Single) {
                durable = rate;
            }
            let (what, note) = if wait {
                (
                    "end to end (submit → run → result)",
                    "submission, claim and result each durable before seen",
                )
            } else {
                ("submit", "acknowledged submissions")
            };
            rows.push(Row::new(
                &format!("{what}, sled store, {name}, {}", submission.who()),
                "tasks/s",
                rate,
                "memory store, same submitters",
                baseline,
                &format!("{note}; {rounds}"),
            ));
        }
    }
    if wait {
        rows.push(more_workers(counts.single, &wasm)?);
        for (submission, count) in [
            (Submission::Single, counts.single),
            (Submission::Batch, counts.batch),
        ] {
            rows.push(claiming_ahead(submission, count, cores, &wasm, &[], 0)?);
        }
        let echo = read(programs::P1_ECHO);
        rows.push(claiming_ahead(
            Submission::Single,
            counts.single,
            cores,
            &echo,
            &payload(PAYLOAD),
            wpool::DEFAULT_CLAIM_AHEAD,
        )?);
    }
    rows.push(crate::postgres::next_to_sled(
        counts.postgres,
        cores,
        SUBMITTERS,
        wait,
        durable,
    )?);
    Ok(rows)
}

/// Workers in the row that shows what more tasks in flight do.
const MANY_WORKERS: usize = 32;

/// End to end by the single submitters with [`MANY_WORKERS`] workers, on
/// the durable sled store next to the memory store: each worker waits for
/// a flush after its claim and after its result, so the tasks in flight,
/// and so the tasks one flush can carry, are as many as the workers.
fn more_workers(count: usize, wasm: &[u8]) -> Result<Row, Box<dyn std::error::Error>> {
    let mut config = PoolConfig::new();
    config.workers(MANY_WORKERS).claim_ahead(0);
    let memory = {
        let pool = Pool::new(config.clone())?;
        let hash = register(&pool, wasm)?;
        submitters(&pool, hash, count, SUBMITTERS, true)
    };
    let dir = tempfile_dir("durable");
    let store = Arc::new(SledStore::open(&dir, &SledOptions::new())?);
    let pool = Pool::with_store(config, store.clone())?;
    let hash = register(&pool, wasm)?;
    let before = store.flush_stats();
    let rate = submitters(&pool, hash, count, SUBMITTERS, true);
    let stats = store.flush_stats();
    drop(pool);
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    let who = format!("{SUBMITTERS} submitters, {MANY_WORKERS} workers, not claiming ahead");
    print_flushes(&who, true, count, &before, &stats);
    Ok(Row::new(
        &format!("end to end, sled store, durable (group commit), {who}"),
        "tasks/s",
        rate,
        "memory store, same submitters and workers",
        memory,
        "more tasks in flight share each flush",
    ))
}

/// The input of the row whose tasks carry data (echoed as their output):
/// a JSON document of a size a task commonly takes.
const PAYLOAD: usize = 4 << 10;

/// A JSON document of `bytes` bytes (none for 0).
fn payload(bytes: usize) -> Vec<u8> {
    if bytes == 0 {
        return Vec::new();
    }
    let mut json = br#"{"data":""#.to_vec();
    let fill = bytes.saturating_sub(json.len() + 2);
    json.extend((0..fill).map(|i| b'a' + (i % 26) as u8));
    json.extend_from_slice(br#""}"#);
    json
}

/// End to end on the durable sled store with the pool claiming up to
/// `ahead` tasks ahead of its free workers (`PoolConfig::claim_ahead`; the
/// default on this store is [`wpool::DEFAULT_CLAIM_AHEAD`], and 0 shows
/// what that default gains), next to the memory store doing the same.
fn claiming_ahead(
    submission: Submission,
    count: usize,
    cores: usize,
    wasm: &[u8],
    input: &[u8],
    ahead: usize,
) -> Result<Row, Box<dyn std::error::Error>> {
    let mut config = PoolConfig::new();
    config.workers(cores).claim_ahead(ahead);
    let memory = {
        let pool = Pool::new(config.clone())?;
        let hash = register(&pool, wasm)?;
        submission.rate_of(&pool, hash, input, count, true)
    };
    let dir = tempfile_dir("durable");
    let store = Arc::new(SledStore::open(&dir, &SledOptions::new())?);
    let pool = Pool::with_store(config, store.clone())?;
    let hash = register(&pool, wasm)?;
    let before = store.flush_stats();
    let rate = submission.rate_of(&pool, hash, input, count, true);
    let stats = store.flush_stats();
    drop(pool);
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    let mut who = if ahead == 0 {
        format!("{}, not claiming ahead", submission.who())
    } else {
        format!("{}, claiming {ahead} ahead", submission.who())
    };
    if !input.is_empty() {
        who += &format!(", {} KiB in and out", input.len() >> 10);
    }
    print_flushes(&who, true, count, &before, &stats);
    let baseline = if ahead == 0 {
        "memory store, same submitters, not claiming ahead"
    } else {
        "memory store, same submitters, claiming ahead"
    };
    Ok(Row::new(
        &format!("end to end, sled store, durable (group commit), {who}"),
        "tasks/s",
        rate,
        baseline,
        memory,
        if !input.is_empty() {
            "the log takes the input with the submission, the output with the end"
        } else if ahead == 0 {
            "a worker waits for a flush before each task"
        } else {
            "one flush carries many claims"
        },
    ))
}

/// The group commits of one measurement, on stderr: how many tasks each
/// flush carried, and what flushes of each size cost.
fn print_flushes(who: &str, wait: bool, tasks: usize, before: &FlushStats, after: &FlushStats) {
    let flushes = after.flushes - before.flushes;
    let waiters = after.waiters - before.waiters;
    let bytes = after.bytes - before.bytes;
    let busy = after.busy - before.busy;
    let per = |n: u64| n as f64 / flushes.max(1) as f64;
    eprintln!(
        "  flushes, {who}{}: {flushes} for {tasks} tasks ({:.1} tasks, {:.1} waiters, {:.0} bytes \
         per flush; {:.3} ms per flush, {:.0} ms flushing in all, longest {:.1} ms)",
        if wait { ", end to end" } else { ", submit" },
        tasks as f64 / flushes.max(1) as f64,
        per(waiters),
        per(bytes),
        busy.as_secs_f64() * 1e3 / flushes.max(1) as f64,
        busy.as_secs_f64() * 1e3,
        after.longest.as_secs_f64() * 1e3,
    );
    for (i, limit) in FlushStats::CLASS_LIMITS.iter().enumerate() {
        let (a, b) = (after.by_size[i], before.by_size[i]);
        let n = a.flushes - b.flushes;
        if n == 0 {
            continue;
        }
        eprintln!(
            "    up to {:>9} bytes: {n:>6} flushes, {:>8.0} bytes and {:.3} ms each",
            if *limit == u64::MAX {
                "any".to_string()
            } else {
                limit.to_string()
            },
            (a.bytes - b.bytes) as f64 / n as f64,
            (a.busy - b.busy).as_secs_f64() * 1e3 / n as f64,
        );
    }
}

/// What sled itself allows: one thread inserting `records` records of the
/// size of a task's record, then flushing, over and over; records per
/// second and time per flush, next to writing and fsyncing the same bytes
/// to a plain file.
pub(crate) fn sled_flush(
    scale: Scale,
    _cores: usize,
) -> Result<Vec<Row>, Box<dyn std::error::Error>> {
    /// About a queued task's record with its index entry and counts.
    const RECORD: usize = 400;
    let total = scale.n(2_000, 20_000);
    let mut rows = Vec::new();
    for records in [1usize, 8, 64, 512] {
        let dir = tempfile_dir("sled-flush");
        let db = sled::Config::new()
            .path(dir.join("sled"))
            .flush_every_ms(None)
            .open()?;
        let tree = db.open_tree("tasks")?;
        let value = vec![7u8; RECORD];
        let flushes = (total / records).max(4);
        let mut bytes = 0;
        let started = Instant::now();
        let mut flushing = Duration::ZERO;
        for n in 0..flushes {
            for r in 0..records {
                tree.insert(((n * records + r) as u64).to_be_bytes(), &value[..])?;
            }
            let at = Instant::now();
            bytes += db.flush()?;
            flushing += at.elapsed();
        }
        let sled_rate = (flushes * records) as f64 / started.elapsed().as_secs_f64();
        drop(tree);
        drop(db);
        // The same bytes per flush, written over a file already its size
        // (as a log of preallocated segments is) and fsynced.
        let path = dir.join("plain");
        let chunk = vec![7u8; (bytes / flushes).max(1)];
        let file = std::fs::File::create(&path)?;
        file.set_len((chunk.len() * flushes) as u64)?;
        file.sync_all()?;
        let started = Instant::now();
        for n in 0..flushes {
            std::os::unix::fs::FileExt::write_all_at(&file, &chunk, (n * chunk.len()) as u64)?;
            file.sync_data()?;
        }
        let plain = flushes as f64 / started.elapsed().as_secs_f64();
        drop(file);
        let _ = std::fs::remove_dir_all(&dir);
        rows.push(Row::new(
            &format!("bare sled: {records} inserts of {RECORD} B, then flush"),
            "flush/s",
            flushes as f64 / flushing.as_secs_f64().max(1e-9),
            "overwrite + fdatasync, same bytes",
            plain,
            &format!(
                "{:.0} B and {:.3} ms per flush; {:.0} records/s",
                bytes as f64 / flushes as f64,
                flushing.as_secs_f64() * 1e3 / flushes as f64,
                sled_rate
            ),
        ));
    }
    Ok(rows)
}
