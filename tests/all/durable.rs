//! The durable store: restarts keep order, delays and attempts; corruption,
//! newer schemas and held directories give clear errors; retention bounds
//! the directory. Real sled files in temporary directories, real WASM.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use wpool::store::{SledOptions, SledStore, Store, SyncMode, TaskFilter};
use wpool::{
    EventKind, Lease, ModuleHash, Outcome, Pool, PoolConfig, TaskId, TaskSpec, TaskState,
    now_millis,
};
use wpool_test_artifacts as programs;

use crate::util::read;

fn open(dir: &Path) -> Arc<SledStore> {
    Arc::new(SledStore::open(dir, &SledOptions::new()).unwrap())
}

fn config(workers: usize) -> PoolConfig {
    let mut config = PoolConfig::new();
    config.workers(workers);
    config
}

fn pool_on(store: &Arc<SledStore>, config: PoolConfig) -> Pool {
    Pool::with_store(config, store.clone()).unwrap()
}

/// Waits until the pool (dropped or stopped) has let go of the store, then
/// closes the store: the sled lock is released and the directory can be
/// opened again.
#[track_caller]
fn release(store: Arc<SledStore>) -> impl Future<Output = ()> {
    let caller = std::panic::Location::caller();
    release_at(store, caller)
}

async fn release_at(store: Arc<SledStore>, caller: &'static std::panic::Location<'static>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Arc::strong_count(&store) > 1 {
        assert!(
            Instant::now() < deadline,
            "{caller}: the pool still holds the store 10 s after it stopped"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(store);
}

/// The order in which tasks started, from the stored attempt times (each
/// task takes at least 20 ms on one worker, so the times are distinct).
fn start_order(store: &SledStore, ids: &[(TaskId, &str)]) -> Vec<String> {
    let mut starts: Vec<(u64, String)> = ids
        .iter()
        .map(|(id, name)| {
            let record = store.get(id).unwrap().unwrap();
            (record.attempts.last().unwrap().started_at, name.to_string())
        })
        .collect();
    starts.sort();
    starts.into_iter().map(|(_, name)| name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_and_delays_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let pool = pool_on(&store, config(1));
    let sleep = pool.register(&read(programs::P1_SLEEP)).await.unwrap();
    // The only worker is busy: nothing below starts before the restart.
    let blocker = pool
        .submit(TaskSpec::new(sleep, b"600000".to_vec()).priority(-100))
        .await
        .unwrap()
        .id();
    while pool.status(blocker).await.unwrap().state != TaskState::Running {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut ids = Vec::new();
    for (i, priority) in [1, 5, 3, 5, 0, 3, 5].into_iter().enumerate() {
        let name: &'static str = Box::leak(format!("p{priority}-{i}").into_boxed_str());
        let handle = pool
            .submit(TaskSpec::new(sleep, b"20".to_vec()).priority(priority))
            .await
            .unwrap();
        ids.push((handle.id(), name));
    }
    // Delayed past the restart; and delayed, but due during the downtime.
    let later = pool
        .submit(
            TaskSpec::new(sleep, b"20".to_vec())
                .priority(9)
                .delay(Duration::from_millis(2500)),
        )
        .await
        .unwrap()
        .id();
    let due = pool
        .submit(
            TaskSpec::new(sleep, b"20".to_vec())
                .priority(-1)
                .delay(Duration::from_millis(300)),
        )
        .await
        .unwrap()
        .id();
    let later_run_at = pool.status(later).await.unwrap().run_at;
    pool.stop_with_grace(Duration::ZERO).await.unwrap();
    drop(pool);
    release(store).await;
    tokio::time::sleep(Duration::from_millis(400)).await;

    let store = open(dir.path());
    let counts = store.counts().unwrap();
    assert_eq!(counts.get(TaskState::Queued), 8, "{counts:?}");
    assert_eq!(counts.get(TaskState::Scheduled), 2, "{counts:?}");
    let pool = pool_on(&store, config(1));
    // The blocker was put back by the stop, its killed run not counted (a
    // graceful stop is neither an attempt nor an interruption); it goes
    // now, before it could occupy the worker again.
    pool.cancel(blocker).await.unwrap();
    let blocker = pool.status(blocker).await.unwrap();
    assert_eq!(blocker.state, TaskState::Cancelled);
    assert!(blocker.attempts.is_empty());
    assert_eq!(blocker.interruptions, 0);
    assert_eq!(blocker.outcome, Some(Outcome::Cancelled));
    for (id, _) in &ids {
        let result = pool.wait(*id).await.unwrap();
        assert_eq!(result.state, TaskState::Succeeded);
        assert_eq!(result.attempts.len(), 1, "it ran once, after the restart");
    }
    assert_eq!(
        start_order(&store, &ids),
        ["p5-1", "p5-3", "p5-6", "p3-2", "p3-5", "p1-0", "p0-4"]
    );
    let due = pool.wait(due).await.unwrap();
    let later = pool.wait(later).await.unwrap();
    let later_start = later.started_at.unwrap();
    assert!(
        later_start >= later_run_at,
        "the delayed task started {} ms early",
        later_run_at - later_start
    );
    assert!(
        later_start < later_run_at + 1000,
        "and on time, not {} ms late",
        later_start - later_run_at
    );
    // The one due during the downtime ran after the queued ones (priority
    // -1), and before the delayed one's time.
    assert!(due.started_at.unwrap() < later_run_at);
    pool.close().await.unwrap();
    drop(pool);
    let listed = store.list(&TaskFilter::default()).unwrap();
    assert_eq!(listed.len(), 10);
    assert!(listed.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    let report = store.check().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.unfinished, 0);
    assert_eq!(report.finished, 10);
}

/// A host that dies is not the task's failure: a task running at a crash
/// runs again, the lost run counted as an interruption, not an attempt; a
/// task that keeps taking its host down ends at its `max_interruptions`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_running_at_a_crash_run_again_as_an_interruption() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let pool = pool_on(&store, config(1));
    let echo = pool.register(&read(programs::P1_ECHO)).await.unwrap();
    let mut ids = Vec::new();
    for (input, interruptions) in [("again", 3), ("poison", 1)] {
        let handle = pool
            .submit(
                TaskSpec::new(echo, input.as_bytes().to_vec())
                    .max_interruptions(interruptions)
                    .delay(Duration::from_secs(3600)),
            )
            .await
            .unwrap();
        ids.push(handle.id());
    }
    pool.stop().await.unwrap();
    drop(pool);
    release(store).await;

    // What a process that died mid-run leaves: the task running under a
    // lease, its attempt started and never ended (the write a claim makes).
    let store = open(dir.path());
    for id in &ids {
        let mut record = store.get(id).unwrap().unwrap();
        record.state = TaskState::Queued;
        let lease = Lease {
            task: *id,
            token: 7,
            expires_at: now_millis() + 3_600_000,
        };
        record.start(lease, now_millis());
        assert!(store.update(&record, TaskState::Scheduled).unwrap());
    }
    assert_eq!(store.counts().unwrap().get(TaskState::Running), 2);
    store.flush_blocking().unwrap();
    drop(store);

    let store = open(dir.path());
    let pool = pool_on(&store, config(1));
    let mut events = pool.subscribe();
    let again = pool.wait(ids[0]).await.unwrap();
    assert_eq!(again.state, TaskState::Succeeded);
    assert_eq!(again.output, b"again");
    assert_eq!(
        again.attempts.len(),
        1,
        "the interrupted run is not an attempt"
    );
    assert_eq!(again.attempts[0].outcome, Some(Outcome::Success));
    assert_eq!(again.interruptions, 1);

    // At its limit of interruptions: ended, with an outcome that says so,
    // and not run again, so a task that kills its host cannot loop forever.
    let poison = pool.wait(ids[1]).await.unwrap();
    assert_eq!(poison.state, TaskState::Failed);
    assert_eq!(poison.outcome, Some(Outcome::Interrupted(1)));
    assert!(poison.attempts.is_empty());
    assert_eq!(poison.interruptions, 1);
    while let Ok(Some(event)) = events.try_recv() {
        if let EventKind::Started { attempt } = event.kind {
            assert_eq!((event.id, attempt), (ids[0], 1));
        }
    }
    pool.close().await.unwrap();
}

/// Flips one byte of a stored record's value through sled itself, as a
/// bad disk or a stray write would.
fn corrupt_task(dir: &Path, id: TaskId) {
    let db = sled::open(dir.join("sled")).unwrap();
    let tasks = db.open_tree("tasks").unwrap();
    let mut value = tasks.get(id.to_bytes()).unwrap().unwrap().to_vec();
    let middle = value.len() / 2;
    value[middle] ^= 0x04;
    tasks.insert(id.to_bytes(), value).unwrap();
    db.flush().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_record_is_reported_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let pool = pool_on(&store, config(1));
    let echo = pool.register(&read(programs::P1_ECHO)).await.unwrap();
    let done = pool
        .submit(TaskSpec::new(echo, b"done".to_vec()))
        .await
        .unwrap()
        .id();
    while !pool.status(done).await.unwrap().state.is_final() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let waiting = pool
        .submit(TaskSpec::new(echo, b"waiting".to_vec()).delay(Duration::from_secs(3600)))
        .await
        .unwrap()
        .id();
    pool.stop().await.unwrap();
    drop(pool);
    release(store).await;

    // A finished task's record: the store opens, the pool runs, and every
    // call that reads the record says what is wrong.
    corrupt_task(dir.path(), done);
    let store = open(dir.path());
    let pool = pool_on(&store, config(1));
    let expected = format!(
        "corrupted record {} in tree `tasks`: checksum mismatch",
        done
    );
    let error = pool.status(done).await.unwrap_err().to_string();
    assert!(error.contains(&expected), "{error}");
    assert!(matches!(
        pool.status(done).await,
        Err(wpool::Error::Store(_))
    ));
    let error = pool
        .list(&TaskFilter::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains(&expected), "{error}");
    let report = store.check().unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(report.problems[0].contains(&expected));
    // The rest works.
    assert_eq!(
        pool.status(waiting).await.unwrap().state,
        TaskState::Scheduled
    );
    let result = pool
        .submit(TaskSpec::new(echo, b"ok".to_vec()))
        .await
        .unwrap()
        .wait()
        .await;
    assert_eq!(result.unwrap().output, b"ok");
    pool.stop().await.unwrap();
    drop(pool);
    release(store).await;

    // An unfinished one: the pool cannot resume it, so it refuses to start
    // and names the record.
    corrupt_task(dir.path(), waiting);
    let store = open(dir.path());
    let error = Pool::with_store(config(1), store.clone())
        .unwrap_err()
        .to_string();
    assert!(
        error.contains(&format!("corrupted record {waiting} in tree `tasks`")),
        "{error}"
    );
}

/// Every file under `dir` with its bytes and modification time.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, SystemTime)> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                files.insert(
                    entry.path(),
                    (
                        std::fs::read(entry.path()).unwrap(),
                        meta.modified().unwrap(),
                    ),
                );
            }
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_schema_refuses_to_open_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let pool = pool_on(&store, config(1));
    let echo = pool.register(&read(programs::P1_ECHO)).await.unwrap();
    pool.submit(TaskSpec::new(echo, b"x".to_vec()).delay(Duration::from_secs(60)))
        .await
        .unwrap();
    pool.stop().await.unwrap();
    drop(pool);
    release(store).await;

    // What a newer wpool leaves behind.
    let version = dir.path().join("wpool-store");
    assert_eq!(
        std::fs::read_to_string(&version).unwrap(),
        format!("wpool store schema {}\n", wpool::store::SCHEMA_VERSION)
    );
    std::fs::write(&version, "wpool store schema 7\n").unwrap();
    let before = snapshot(dir.path());
    tokio::time::sleep(Duration::from_millis(20)).await;
    let error = SledStore::open(dir.path(), &SledOptions::new()).unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, wpool::Error::Store(_)));
    assert!(message.contains("schema version 7"), "{message}");
    assert!(
        message.contains(&format!(
            "reads schema version {}",
            wpool::store::SCHEMA_VERSION
        )),
        "{message}"
    );
    assert!(message.contains("nothing was modified"), "{message}");
    assert_eq!(snapshot(dir.path()), before, "the files were modified");

    // Garbage in the version file is refused the same way.
    std::fs::write(&version, "hello").unwrap();
    let message = SledStore::open(dir.path(), &SledOptions::new())
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("does not name a schema version"),
        "{message}"
    );
}

const HOLD_ENV: &str = "WPOOL_TEST_HOLD_DIR";

/// Not a test on its own: the child process of
/// `a_held_data_directory_gives_a_clear_error`, which holds a store open
/// until its stdin closes.
#[test]
#[ignore = "run by a_held_data_directory_gives_a_clear_error in a child process"]
fn hold_data_directory_child() {
    let Some(dir) = std::env::var_os(HOLD_ENV) else {
        return;
    };
    let _store = SledStore::open(&dir, &SledOptions::new()).unwrap();
    println!("holding");
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_data_directory_gives_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "durable::hold_data_directory_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HOLD_ENV, dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "the child ended before it held the store"
        );
        if line.contains("holding") {
            break;
        }
    }

    let error = SledStore::open(dir.path(), &SledOptions::new()).unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, wpool::Error::InUse(_)), "{error:?}");
    assert!(
        message.contains(&dir.path().display().to_string()),
        "{message}"
    );
    assert!(
        message.contains("another wpool process holds the lock"),
        "{message}"
    );
    assert!(
        message.contains(&format!("process {}", child.id())),
        "{message}"
    );

    // Once the holder is gone, the directory opens.
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    let store = open(dir.path());
    assert_eq!(store.counts().unwrap().total(), 0);
}

/// The size of the files under `dir` as `du` counts it: allocated blocks.
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let meta = entry.as_ref().unwrap().metadata().unwrap();
            if meta.is_dir() {
                stack.push(entry.unwrap().path());
            } else {
                total += meta.blocks() * 512;
            }
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_bounds_the_directory_under_a_steady_stream() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut config = config(2);
    config.retention(Duration::from_millis(200));
    let pool = pool_on(&store, config);
    let echo = pool.register(&read(programs::P1_ECHO)).await.unwrap();
    let input = vec![b'x'; 2048];
    let mut sizes = Vec::new();
    let rounds = 20;
    let per_round = 300;
    for _ in 0..rounds {
        // A handle does not keep its result past retention: a waiter first
        // polled after the sweep (a loaded machine) would find nothing. The
        // events, subscribed to before submitting, miss no end.
        let mut events = pool.subscribe();
        let mut ids = std::collections::HashSet::new();
        for _ in 0..per_round {
            let handle = pool
                .submit(TaskSpec::new(echo, input.clone()))
                .await
                .unwrap();
            ids.insert(handle.id());
        }
        while !ids.is_empty() {
            let event = tokio::time::timeout(Duration::from_secs(60), events.recv())
                .await
                .expect("a round's tasks end within a minute")
                .unwrap();
            match event.kind {
                EventKind::Succeeded => assert!(ids.remove(&event.id)),
                EventKind::Failed { .. } | EventKind::Cancelled | EventKind::Expired => {
                    panic!("{} ended {:?}", event.id, event.kind)
                }
                _ => {}
            }
        }
        // Past retention, and the sweeper (every 100 ms here) has run.
        tokio::time::sleep(Duration::from_millis(450)).await;
        store.sync().unwrap();
        sizes.push(disk_usage(dir.path()));
    }
    let counts = store.counts().unwrap();
    eprintln!(
        "data directory after each round of {per_round} tasks (2 KiB input and output each): {:?} KiB; {} tasks kept",
        sizes.iter().map(|s| s / 1024).collect::<Vec<_>>(),
        counts.total()
    );
    // Results past retention are gone: at most a round's worth remains.
    assert!(counts.total() <= per_round as u64, "{counts:?}");
    assert!(pool.status(TaskId::new()).await.is_err());
    // The directory stops growing. sled appends every write to its log and
    // reclaims a segment once the pages in it were rewritten or removed, so
    // the size moves in steps of segments around the volume of a few
    // rounds of writes, instead of adding up; the store's own write-ahead
    // log holds at most the writes since its last checkpoint (a quarter of
    // a second), in a segment extended with zeros ahead of its records (up
    // to 1 MiB). Without retention every round would stay: at least its
    // inputs and outputs, 2 x 2 KiB x 300 = 1.2 MiB a round, 24 MiB in all
    // (measured: 47 MiB after the 20 rounds, and still growing). With it,
    // measured here: 2-3 MiB after the first round, then between 4 and 13
    // MiB, going up and down with sled's reclaiming (over 60 rounds too,
    // so it is a plateau); the last round of a run ended at 7-13 MiB. So
    // the bound is three quarters of what was written: far below what no
    // retention leaves, and clear of where the plateau reaches.
    let written = (rounds * per_round * 2 * input.len()) as u64;
    let half = rounds / 2;
    let first = *sizes[..half].iter().max().unwrap();
    let last = *sizes[half..].iter().max().unwrap();
    let kib = sizes.iter().map(|s| s / 1024).collect::<Vec<_>>();
    assert!(last <= 2 * first, "the directory kept growing: {kib:?} KiB");
    assert!(
        *sizes.last().unwrap() < written / 4 * 3,
        "the directory holds most of what was written ({} KiB): {kib:?} KiB",
        written / 1024
    );

    // The module is still used by retained results; once they are purged
    // too, garbage collection removes it.
    pool.close().await.unwrap();
    store.purge_finished(now_millis() + 1, None).unwrap();
    assert_eq!(store.gc_modules().unwrap(), 1);
    assert!(store.module(&echo).unwrap().is_none());
    let report = store.check().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!((report.tasks, report.modules), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_whose_module_is_not_stored_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let pool = pool_on(&store, config(1));
    // Compiled by the executor but never stored: a restart could not run
    // it, so the durable store refuses it rather than acknowledge it.
    let compiled = pool.executor().register(&read(programs::P1_ECHO)).unwrap();
    let error = pool
        .submit(TaskSpec::new(compiled.hash(), b"x".to_vec()))
        .await
        .unwrap_err();
    assert!(matches!(error, wpool::Error::UnknownModule(_)), "{error}");
    let unknown: ModuleHash = "11".repeat(32).parse().unwrap();
    assert!(store.module(&unknown).unwrap().is_none());
}

/// Submits `n` tasks from `concurrency` submitters; returns submissions per
/// second.
async fn submit_rate(pool: &Pool, module: ModuleHash, n: usize, concurrency: usize) -> f64 {
    let start = Instant::now();
    let mut submitters = Vec::new();
    for _ in 0..concurrency {
        let pool = pool.clone();
        submitters.push(tokio::spawn(async move {
            for _ in 0..n / concurrency {
                pool.submit(TaskSpec::new(module, b"1".to_vec()).delay(Duration::from_secs(3600)))
                    .await
                    .unwrap();
            }
        }));
    }
    for s in submitters {
        s.await.unwrap();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Prints the cost of durability: submit throughput with durable
/// acknowledgement (group commit), relaxed acknowledgement and the
/// in-memory store, and the time to reopen 100,000 queued tasks until the
/// first starts. A measurement, not a check: run it on purpose.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run with --ignored --nocapture"]
async fn measure_submit_throughput_and_reopen_time() {
    let n = 4000;
    for concurrency in [1, 32] {
        let mut line = format!("submit, {concurrency} submitters:");
        for mode in ["durable", "relaxed", "memory"] {
            let dir = tempfile::tempdir().unwrap();
            let store: Arc<dyn Store> = match mode {
                "durable" => open(dir.path()),
                "relaxed" => {
                    let mut options = SledOptions::new();
                    options.sync(SyncMode::Relaxed {
                        interval: Duration::from_millis(100),
                    });
                    Arc::new(SledStore::open(dir.path(), &options).unwrap())
                }
                _ => Arc::new(wpool::store::MemoryStore::new()),
            };
            let pool = Pool::with_store(config(1), store).unwrap();
            let echo = pool.register(&read(programs::P1_ECHO)).await.unwrap();
            let rate = submit_rate(&pool, echo, n, concurrency).await;
            line += &format!(" {mode} {rate:.0}/s");
        }
        eprintln!("{line}");
    }

    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let echo_bytes = read(programs::P1_ECHO);
    let echo = ModuleHash::of(&echo_bytes);
    store.put_module(&echo, &echo_bytes).unwrap();
    let template = {
        let pool = pool_on(&store, config(1));
        pool.register(&echo_bytes).await.unwrap();
        let handle = pool
            .submit(TaskSpec::new(echo, b"1".to_vec()).delay(Duration::from_secs(3600)))
            .await
            .unwrap();
        let record = pool.status(handle.id()).await.unwrap();
        pool.cancel(handle.id()).await.unwrap();
        pool.stop().await.unwrap();
        record
    };
    release(store).await;
    let store = open(dir.path());
    let start = Instant::now();
    for _ in 0..100_000 {
        let mut record = template.clone();
        record.id = TaskId::new();
        record.seq = store.next_seq().unwrap();
        record.state = TaskState::Queued;
        record.run_at = now_millis();
        store.insert(&[record]).unwrap();
    }
    store.sync().unwrap();
    eprintln!(
        "inserted 100000 queued tasks in {:.1} s; data directory {} MiB",
        start.elapsed().as_secs_f64(),
        disk_usage(dir.path()) >> 20
    );
    drop(store);

    let start = Instant::now();
    let store = open(dir.path());
    let opened = start.elapsed();
    let unfinished = store.unfinished().unwrap().len();
    let scanned = start.elapsed();
    let pool = pool_on(&store, config(1));
    let mut events = pool.subscribe();
    let first = loop {
        if let Ok(event) = events.recv().await
            && matches!(event.kind, EventKind::Started { .. })
        {
            break start.elapsed();
        }
    };
    eprintln!(
        "reopen with {unfinished} queued tasks: store open {:.0} ms, unfinished() {:.0} ms, \
         first task started after {:.0} ms (includes a second unfinished() by the pool and \
         compiling the module)",
        opened.as_secs_f64() * 1e3,
        scanned.as_secs_f64() * 1e3,
        first.as_secs_f64() * 1e3
    );
    pool.stop_with_grace(Duration::ZERO).await.unwrap();
}
