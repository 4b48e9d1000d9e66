//! The PostgreSQL backend beyond the contract (`contract.rs` runs that on
//! it too): its schema's versions, a clear error when the server is out of
//! reach, hosts waking each other, and `wpool serve --store` running real
//! tasks end to end.

use std::time::{Duration, Instant};

use serde_json::json;
use wpool::backend::{
    Backend, Enqueued, POSTGRES_SCHEMA_VERSION, PostgresBackend, PostgresOptions,
};
use wpool::{Error, Limits, ModuleHash, TaskRecord, TaskSpec, TaskState, now_millis};
use wpool_test_artifacts as programs;

use crate::pg::TestDatabase;
use crate::server::Server;
use crate::util::task;

/// A database migrated by a newer wpool is refused, naming both versions
/// and what to do, rather than misread.
#[test]
fn a_newer_schema_is_refused_naming_both_versions() {
    let db = TestDatabase::create();
    drop(db.backend());
    db.execute("INSERT INTO schema_version (version) VALUES (99)");
    let error = PostgresBackend::connect_blocking(&db.url, &PostgresOptions::new()).unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, Error::Store(_)), "{message}");
    assert!(message.contains("schema version 99"), "{message}");
    assert!(
        message.contains(&format!("version {POSTGRES_SCHEMA_VERSION}")),
        "{message}"
    );
    assert!(
        message.contains("point it at another database"),
        "{message}"
    );
}

/// Hosts starting together migrate once: the advisory lock serializes them.
#[test]
fn hosts_starting_together_migrate_once() {
    let db = TestDatabase::create();
    let backends: Vec<_> = std::thread::scope(|scope| {
        let started: Vec<_> = (0..4).map(|_| scope.spawn(|| db.backend())).collect();
        started.into_iter().map(|s| s.join().unwrap()).collect()
    });
    assert_eq!(backends.len(), 4);
    drop(backends);
    // The versions recorded: one row, the current one.
    db.execute(&format!(
        "DO $$ BEGIN IF (SELECT count(*) FROM schema_version) <> 1 \
         OR (SELECT max(version) FROM schema_version) <> {POSTGRES_SCHEMA_VERSION} \
         THEN RAISE EXCEPTION 'schema_version is wrong'; END IF; END $$"
    ));
}

/// A server out of reach is an unavailable store, and the error says where
/// and what to do; a missing database is a store error (waiting will not
/// make it).
#[test]
fn an_unreachable_server_is_a_clear_error() {
    // Nothing listens on port 1.
    let error = PostgresBackend::connect_blocking(
        "postgres://wpool@127.0.0.1:1/nothing",
        PostgresOptions::new().connect_timeout(Duration::from_secs(2)),
    )
    .unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, Error::Unavailable(_)), "{message}");
    assert!(
        message.contains("cannot reach PostgreSQL at 127.0.0.1:1/nothing"),
        "{message}"
    );
    assert!(message.contains("check that the server runs"), "{message}");
    // A server that runs, without the database.
    let db = TestDatabase::create();
    let missing = db.url.replace("wpool_test_", "wpool_missing_");
    let error = PostgresBackend::connect_blocking(&missing, &PostgresOptions::new()).unwrap_err();
    assert!(matches!(error, Error::Store(_)), "{error}");
    assert!(error.to_string().contains("no such database"), "{error}");
    assert!(error.to_string().contains("createdb"), "{error}");
    let error =
        PostgresBackend::connect_blocking("postgres://[nope", &PostgresOptions::new()).unwrap_err();
    assert!(matches!(error, Error::Config(_)), "{error}");
}

/// A submission on one host wakes another that waits for work (LISTEN /
/// NOTIFY), long before any poll would have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_wakes_the_other_hosts() {
    let db = TestDatabase::create();
    let submitter = db.open();
    let waiter = db.open();
    // The wake-up every new listening connection gives, for what it may
    // have missed.
    tokio::time::timeout(Duration::from_secs(10), waiter.wait_for_work())
        .await
        .expect("the first wake-up");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), waiter.wait_for_work())
            .await
            .is_err(),
        "woken with no work"
    );
    let wasm = std::fs::read(programs::P1_TRIVIAL).unwrap();
    let module = ModuleHash::of(&wasm);
    submitter.put_module(&module, &wasm).await.unwrap();
    let waiting = {
        let waiter = waiter.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            waiter.wait_for_work().await;
            started.elapsed()
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stored = submitter.enqueue(vec![task(module, |s| s)]).await.unwrap();
    assert!(matches!(stored[0], Enqueued::New(_)));
    let waited = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the other host was not woken")
        .unwrap();
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    let claim = waiter.claim(1, Duration::from_secs(30)).await.unwrap();
    assert_eq!(claim.claimed.len(), 1, "the woken host takes the task");
}

/// With notifications off (`PostgresOptions::listen(false)`) a host is
/// never woken, and finds work submitted elsewhere by polling: the path
/// the benchmark's submit-to-start row compares NOTIFY with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_notifications_off_a_host_finds_work_by_polling() {
    let db = TestDatabase::create();
    let submitter = db.open();
    let quiet = std::sync::Arc::new(
        PostgresBackend::connect_with(&db.url, PostgresOptions::new().listen(false))
            .await
            .unwrap(),
    );
    let wasm = std::fs::read(programs::P1_TRIVIAL).unwrap();
    let module = ModuleHash::of(&wasm);
    submitter.put_module(&module, &wasm).await.unwrap();
    submitter.enqueue(vec![task(module, |s| s)]).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), quiet.wait_for_work())
            .await
            .is_err(),
        "woken with notifications off"
    );

    let mut config = wpool::PoolConfig::new();
    config.workers(1).poll_interval(Duration::from_millis(200));
    let pool = wpool::Pool::with_backend(config, quiet).unwrap();
    let record = task(module, |s| s);
    let id = record.id;
    submitter.enqueue(vec![record]).await.unwrap();
    let result = tokio::time::timeout(Duration::from_secs(20), pool.wait(id))
        .await
        .expect("the polling host never ran the task")
        .unwrap();
    assert!(result.is_success(), "{:?}", result.outcome);
    pool.stop().await.unwrap();
}

/// Several hosts expiring leases at once: each lost lease is expired by
/// one host only, so each task counts one interruption; the host that lost
/// a lease is refused when it comes back, and the host that ran the task
/// again records its result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_expire_each_lease_once_and_fence_the_loser() {
    let db = TestDatabase::create();
    let hosts: Vec<_> = (0..3).map(|_| db.open()).collect();
    let wasm = std::fs::read(programs::P1_TRIVIAL).unwrap();
    let module = ModuleHash::of(&wasm);
    hosts[0].put_module(&module, &wasm).await.unwrap();
    let n = 60;
    hosts[0]
        .enqueue((0..n).map(|_| task(module, |s| s)).collect())
        .await
        .unwrap();
    let claim = hosts[0].claim(n, Duration::from_millis(50)).await.unwrap();
    assert_eq!(claim.claimed.len(), n);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let expiring: Vec<_> = hosts
        .iter()
        .map(|host| {
            let host = host.clone();
            tokio::spawn(async move { host.expire_leases().await.unwrap() })
        })
        .collect();
    let mut seen = std::collections::HashSet::new();
    for expired in expiring {
        for record in expired.await.unwrap() {
            assert_eq!(record.state, TaskState::Queued);
            assert_eq!(record.interruptions, 1);
            assert!(seen.insert(record.id), "{} expired twice", record.id);
        }
    }
    assert_eq!(seen.len(), n);

    // The first holder comes back after another host ran the task again.
    let (lost_record, lost) = &claim.claimed[0];
    let mut rerun = None;
    while rerun.is_none() {
        let again = hosts[1].claim(10, Duration::from_secs(30)).await.unwrap();
        assert!(!again.claimed.is_empty(), "the task never came back");
        rerun = again
            .claimed
            .into_iter()
            .find(|(r, _)| r.id == lost_record.id);
    }
    let (_, lease) = rerun.unwrap();
    let done = |outcome| wpool::Completion {
        outcome,
        output: b"mine".to_vec().into(),
        log: String::new(),
        progress: None,
        duration_us: 1,
        fuel_consumed: None,
        started_at: now_millis(),
        at: now_millis(),
    };
    assert_eq!(
        hosts[0]
            .complete(lost, done(wpool::Outcome::Exit(9)))
            .await
            .unwrap(),
        wpool::backend::Completed::LeaseLost
    );
    assert_eq!(
        hosts[0]
            .renew(&[*lost], Duration::from_secs(30))
            .await
            .unwrap(),
        [wpool::backend::LeaseState::Lost]
    );
    let recorded = hosts[1]
        .complete(&lease, done(wpool::Outcome::Success))
        .await
        .unwrap();
    assert!(matches!(recorded, wpool::backend::Completed::Recorded(_)));
    let stored = hosts[0].get(&lost_record.id).await.unwrap().unwrap();
    assert_eq!(stored.state, TaskState::Succeeded);
    assert_eq!((stored.interruptions, stored.attempts.len()), (1, 1));
}

/// Two hosts submitting batches that name the same idempotency keys in
/// opposite orders, at once: no deadlock, no error, and each key ends with
/// one task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_sharing_keys_never_deadlock() {
    let db = TestDatabase::create();
    let hosts = [db.open(), db.open()];
    let wasm = std::fs::read(programs::P1_TRIVIAL).unwrap();
    let module = ModuleHash::of(&wasm);
    hosts[0].put_module(&module, &wasm).await.unwrap();
    for round in 0..20 {
        let keys: Vec<String> = (0..10).map(|k| format!("r{round}-k{k}")).collect();
        let batches = hosts.iter().enumerate().map(|(h, host)| {
            let host = host.clone();
            let mut keys = keys.clone();
            if h == 1 {
                keys.reverse();
            }
            tokio::spawn(async move {
                let tasks = keys
                    .iter()
                    .map(|key| {
                        TaskRecord::new(
                            TaskSpec::new(module, b"{}".to_vec()).idempotency_key(key.as_str()),
                            module,
                            Limits::default(),
                            now_millis(),
                        )
                    })
                    .collect();
                host.enqueue(tasks).await.unwrap()
            })
        });
        let mut stored = 0;
        for batch in batches.collect::<Vec<_>>() {
            stored += batch
                .await
                .unwrap()
                .iter()
                .filter(|e| matches!(e, Enqueued::New(_)))
                .count();
        }
        assert_eq!(stored, 10, "round {round}: each key stored once");
        for key in &keys {
            assert!(hosts[1].by_key(key).await.unwrap().is_some(), "{key}");
        }
    }
    assert_eq!(hosts[0].counts().await.unwrap().total(), 200);
}

/// `wpool serve --store postgres://…`: a real task, submitted over HTTP,
/// runs and its result is in the database, where another host sees it.
#[test]
fn serve_runs_a_task_from_a_postgres_store() {
    let db = TestDatabase::create();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--store", &db.url, "--workers", "2"]);
    let bytes = std::fs::read(programs::P1_ECHO).unwrap();
    let (status, module) = server.post_raw("/v1/modules", &bytes);
    assert_eq!(status, 201, "{module}");
    let echo = module["hash"].as_str().unwrap().to_string();
    let (status, answer) = server.post(
        "/v1/tasks?wait=30s",
        &json!({"module": echo, "input": {"x": 1}, "timeout": "5s", "labels": {"via": "pg"}}),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["result"]["state"], "succeeded", "{answer}");
    assert_eq!(answer["result"]["output"], r#"{"x":1}"#);
    let id: wpool::TaskId = answer["task"]["id"].as_str().unwrap().parse().unwrap();

    // Another host (this test) reads it from the database.
    let other = db.backend();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let stored = runtime
        .block_on(other.get(&id))
        .unwrap()
        .expect("the task is in the database");
    assert_eq!(stored.state, TaskState::Succeeded);
    assert_eq!(
        stored.output,
        wpool::Payload::Inline(br#"{"x":1}"#.to_vec())
    );
    assert_eq!(stored.labels["via"], "pg");
    assert_eq!(stored.attempts.len(), 1);
    let modules = runtime.block_on(other.modules()).unwrap();
    assert_eq!(modules.len(), 1);
    assert_eq!(modules[0].hash.to_string(), echo);
    drop(other);
    drop(runtime);
    assert!(server.log().contains("store postgres"), "{}", server.log());

    // The same store named by the config file's `store`, and by
    // WPOOL_STORE: the task is there.
    let config = dir.path().join("wpool.toml");
    std::fs::write(&config, format!("store = \"{}\"\n", db.url)).unwrap();
    let by_file = Server::start(
        &dir.path().join("by-file"),
        &["--config", config.to_str().unwrap()],
    );
    let by_env = Server::start_with(&dir.path().join("by-env"), &[], |mut command| {
        command.env("WPOOL_STORE", &db.url);
        command
    });
    for other in [&by_file, &by_env] {
        let (status, body) = other.get(&format!("/v1/tasks/{id}"));
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["task"]["state"], "succeeded", "{body}");
        assert!(other.log().contains("store postgres"), "{}", other.log());
    }

    // A bad URL is refused as bad input, before anything starts.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wpool"))
        .args([
            "serve",
            "--store",
            "mysql://x@y/z",
            "--listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("other"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("takes a PostgreSQL URL"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two `wpool serve` on one database: tasks submitted to either run once
/// each, both hosts take a share, and a long poll on either host gives
/// the result of a task the other one ran.
#[test]
fn two_servers_on_one_database_run_each_task_once() {
    let db = TestDatabase::create();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let start = |i: usize| {
        let dir: &tempfile::TempDir = &dirs[i];
        Server::start(dir.path(), &["--store", &db.url, "--workers", "2"])
    };
    let first = start(0);
    let (status, module) =
        first.post_raw("/v1/modules", &std::fs::read(programs::P1_SLEEP).unwrap());
    assert_eq!(status, 201, "{module}");
    let sleep = module["hash"].as_str().unwrap().to_string();
    // Running on the first host before the second exists: only the first
    // can run it, and the second is asked for its result below.
    let (status, answer) = first.post(
        "/v1/tasks",
        &json!({"module": sleep, "input": 2000, "timeout": "20s"}),
    );
    assert_eq!(status, 201, "{answer}");
    let long = answer["task"]["id"].as_str().unwrap().to_string();
    first.wait_state(&long, "running");
    let servers = [first, start(1)];

    let n = 16;
    let ids: Vec<String> = (0..n)
        .map(|i| {
            // Each host is given half, naming the module by its hash: the
            // second host finds it in the database.
            let (status, answer) = servers[i % 2].post(
                "/v1/tasks",
                &json!({"module": sleep, "input": 150, "timeout": "10s"}),
            );
            assert_eq!(status, 201, "{answer}");
            answer["task"]["id"].as_str().unwrap().to_string()
        })
        .collect();
    let (status, result) = servers[1].get(&format!("/v1/tasks/{long}/result?wait=30s"));
    assert_eq!(
        status, 200,
        "the second host hears of the first's result: {result}"
    );
    assert_eq!(result["output"], "slept 2000 ms");
    for (i, id) in ids.iter().enumerate() {
        // Waited for on the host that was not given it.
        let (status, result) = servers[(i + 1) % 2].get(&format!("/v1/tasks/{id}/result?wait=30s"));
        assert_eq!(status, 200, "{result}");
        assert_eq!(result["state"], "succeeded", "{result}");
        assert_eq!(result["output"], "slept 150 ms");
        assert_eq!(result["attempts"], 1, "ran once: {result}");
        assert_eq!(result["interruptions"], 0, "{result}");
    }
    let finished: Vec<u64> = servers
        .iter()
        .map(|server| {
            let (status, stats) = server.get("/v1/stats");
            assert_eq!(status, 200, "{stats}");
            assert_eq!(stats["counts"]["succeeded"], n + 1, "{stats}");
            stats["finished"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(
        finished.iter().sum::<u64>(),
        n as u64 + 1,
        "each task ran on one host only: {finished:?}"
    );
    assert!(
        finished.iter().all(|&ran| ran > 0),
        "both hosts took work: {finished:?}"
    );
}

/// A host killed (SIGKILL) while it runs a task: its lease is not renewed,
/// and once it expires another host runs the task again, counting one
/// interruption and no extra attempt.
#[test]
fn a_task_of_a_killed_host_runs_again_on_another() {
    let db = TestDatabase::create();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let flags = ["--store", &db.url, "--workers", "1", "--lease-ttl", "1s"];
    let doomed = Server::start(dirs[0].path(), &flags);
    let (status, module) =
        doomed.post_raw("/v1/modules", &std::fs::read(programs::P1_SLEEP).unwrap());
    assert_eq!(status, 201, "{module}");
    let (status, answer) = doomed.post(
        "/v1/tasks",
        &json!({"module": module["hash"], "input": 1500, "timeout": "20s"}),
    );
    assert_eq!(status, 201, "{answer}");
    let id = answer["task"]["id"].as_str().unwrap().to_string();
    doomed.wait_state(&id, "running");
    drop(doomed); // SIGKILL: no release, no heartbeat.

    let survivor = Server::start(dirs[1].path(), &flags);
    let started = Instant::now();
    let (status, result) = survivor.get(&format!("/v1/tasks/{id}/result?wait=30s"));
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["state"], "succeeded", "{result}");
    assert_eq!(result["output"], "slept 1500 ms");
    assert_eq!(result["attempts"], 1, "{result}");
    assert_eq!(result["interruptions"], 1, "{result}");
    // The lease (1 s) ran out, then the run (1.5 s): well before the wait.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    let (_, stats) = survivor.get("/v1/stats");
    assert_eq!(stats["finished"], 1, "the survivor ran it: {stats}");
}

/// `--max-queued` on a shared queue: tasks a host counted as waiting and
/// another host ran leave room, though the first host never ran them.
#[test]
fn room_freed_by_another_host_counts() {
    let db = TestDatabase::create();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let full = Server::start(
        dirs[0].path(),
        &["--store", &db.url, "--workers", "1", "--max-queued", "2"],
    );
    let (status, module) =
        full.post_raw("/v1/modules", &std::fs::read(programs::P1_SLEEP).unwrap());
    assert_eq!(status, 201, "{module}");
    // The first host's only worker stays busy: the tasks below run on the
    // second host.
    let (status, answer) = full.post(
        "/v1/tasks",
        &json!({"module": module["hash"], "input": 20000, "timeout": "30s"}),
    );
    assert_eq!(status, 201, "{answer}");
    full.wait_state(answer["task"]["id"].as_str().unwrap(), "running");
    let runner = Server::start(dirs[1].path(), &["--store", &db.url, "--workers", "2"]);
    for i in 0..6 {
        let (status, answer) = full.post(
            "/v1/tasks?wait=30s",
            &json!({"module": module["hash"], "input": 10, "timeout": "10s"}),
        );
        assert_eq!(status, 200, "task {i}: {answer}");
        assert_eq!(answer["result"]["state"], "succeeded", "{answer}");
    }
    let (_, stats) = runner.get("/v1/stats");
    assert_eq!(stats["finished"], 6, "{stats}");
}

/// A cancel given to one host of a task another host runs: the holder
/// hears of it at its next heartbeat and kills the run, which ends
/// `cancelled`, long before it would have ended by itself.
#[test]
fn a_cancel_reaches_the_host_that_runs_the_task() {
    let db = TestDatabase::create();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let flags = ["--store", &db.url, "--workers", "1", "--lease-ttl", "1s"];
    let runner = Server::start(dirs[0].path(), &flags);
    let (status, module) =
        runner.post_raw("/v1/modules", &std::fs::read(programs::P1_SLEEP).unwrap());
    assert_eq!(status, 201, "{module}");
    let (status, answer) = runner.post(
        "/v1/tasks",
        &json!({"module": module["hash"], "input": 60000, "timeout": "120s"}),
    );
    assert_eq!(status, 201, "{answer}");
    let id = answer["task"]["id"].as_str().unwrap().to_string();
    runner.wait_state(&id, "running");
    let other = Server::start(dirs[1].path(), &flags);
    let started = Instant::now();
    let (status, answer) = other.delete(&format!("/v1/tasks/{id}"));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["cancel"], "killed", "{answer}");
    let (status, result) = other.get(&format!("/v1/tasks/{id}/result?wait=30s"));
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["state"], "cancelled", "{result}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let (_, stats) = runner.get("/v1/stats");
    assert_eq!(stats["finished"], 1, "the runner recorded it: {stats}");
}

/// The library: a `Pool` over a `PostgresBackend` runs a task, and a second
/// pool on the same database (another program) waits for it and gets the
/// same result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_in_two_programs_share_one_queue() {
    let db = TestDatabase::create();
    let backend = PostgresBackend::connect(&db.url).await.unwrap();
    let runner = wpool::Pool::with_backend(
        wpool::PoolConfig::new().workers(1).clone(),
        std::sync::Arc::new(backend),
    )
    .unwrap();
    let watcher = wpool::Pool::with_backend(
        wpool::PoolConfig::new()
            .workers(1)
            .poll_interval(Duration::from_millis(100))
            .clone(),
        db.open(),
    )
    .unwrap();
    let module = runner
        .register(&std::fs::read(programs::P1_ECHO).unwrap())
        .await
        .unwrap();
    let handle = runner
        .submit(TaskSpec::new(module, b"shared".to_vec()))
        .await
        .unwrap();
    let watched = tokio::time::timeout(Duration::from_secs(30), watcher.wait(handle.id()))
        .await
        .expect("the second pool hears of the result")
        .unwrap();
    let result = handle.wait().await.unwrap();
    assert_eq!(result.state, TaskState::Succeeded);
    assert_eq!(result.output, b"shared");
    assert_eq!(watched, result);
    runner.close().await.unwrap();
    watcher.close().await.unwrap();
}

/// Events cross hosts: a pool that runs nothing (paused) and polls for
/// results only every 10 minutes still streams `submitted`, `started` and
/// `succeeded` of a task another host runs, in that order, and its waiter
/// gets the result at once, from the event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_a_task_run_on_another_host_reach_every_host() {
    let db = TestDatabase::create();
    let watcher = wpool::Pool::with_backend(
        wpool::PoolConfig::new()
            .workers(1)
            .poll_interval(Duration::from_secs(600))
            .clone(),
        db.open(),
    )
    .unwrap();
    watcher.pause();
    let mut events = watcher.subscribe();
    let runner =
        wpool::Pool::with_backend(wpool::PoolConfig::new().workers(1).clone(), db.open()).unwrap();
    let module = watcher
        .register(&std::fs::read(programs::P1_ECHO).unwrap())
        .await
        .unwrap();
    let mut runner_events = runner.subscribe();
    let id = watcher
        .submit(TaskSpec::new(module, b"seen everywhere".to_vec()))
        .await
        .unwrap()
        .id();
    let result = tokio::time::timeout(Duration::from_secs(60), watcher.wait(id))
        .await
        .expect("the waiter on the host that does not run the task is woken by the event")
        .unwrap();
    assert_eq!(result.state, TaskState::Succeeded);
    let mut seen = Vec::new();
    while !seen.contains(&"succeeded") {
        let event = tokio::time::timeout(Duration::from_secs(30), events.recv())
            .await
            .expect("the succeeded event arrives")
            .unwrap();
        if event.id == id {
            seen.push(match event.kind {
                wpool::EventKind::Submitted => "submitted",
                wpool::EventKind::Started { attempt } => {
                    assert_eq!(attempt, 1);
                    "started"
                }
                wpool::EventKind::Succeeded => "succeeded",
                other => panic!("unexpected event {other:?}"),
            });
        }
    }
    assert_eq!(seen, ["submitted", "started", "succeeded"]);
    // The runner's own stream has each event of the task once: a host
    // does not hear its own events back from the database. Its own events
    // are in order; the watcher's `submitted` is heard when it arrives,
    // which may be after the runner's `started` (the watcher publishes it
    // after the commit whose wake-up the runner acts on).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut kinds = Vec::new();
    while let Some(event) = runner_events.try_recv().unwrap() {
        if event.id == id {
            kinds.push(event.kind);
        }
    }
    let own: Vec<_> = kinds
        .iter()
        .filter(|k| **k != wpool::EventKind::Submitted)
        .cloned()
        .collect();
    assert_eq!(
        own,
        [
            wpool::EventKind::Started { attempt: 1 },
            wpool::EventKind::Succeeded
        ],
        "{kinds:?}"
    );
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == wpool::EventKind::Submitted)
            .count(),
        1,
        "{kinds:?}"
    );
    runner.close().await.unwrap();
    watcher.close().await.unwrap();
}
