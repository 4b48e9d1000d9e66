//! The rows of the PostgreSQL backend, and the server they run on: the
//! one named by `WPOOL_BENCH_POSTGRES` (or `WPOOL_TEST_POSTGRES`) when set,
//! else a throwaway cluster started with `scripts/pg-cluster.sh` on first
//! use and stopped at the end of the run (also when a section fails).
//! Every measurement gets a database of its own, dropped after it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio_postgres::NoTls;
use wpool::backend::{PostgresBackend, PostgresOptions};
use wpool::store::{SledOptions, SledStore};
use wpool::{EventKind, Pool, PoolConfig, TaskSpec, TaskState};
use wpool_test_artifacts as programs;

use crate::rows::{read, register, submitters, tempfile_dir};
use crate::{Row, Scale};

type Failure = Box<dyn std::error::Error>;

/// A PostgreSQL server this run may create databases on.
struct Server {
    /// A URL with the right to create databases.
    admin: String,
    /// The cluster this run started, to stop at the end.
    cluster: Option<PathBuf>,
}

static SERVER: Mutex<Option<Arc<Server>>> = Mutex::new(None);

/// The server, started on first use when none is given.
fn server() -> Result<Arc<Server>, Failure> {
    let mut slot = SERVER.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(server) = &*slot {
        return Ok(server.clone());
    }
    let given = ["WPOOL_BENCH_POSTGRES", "WPOOL_TEST_POSTGRES"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|url| !url.is_empty()));
    let server = match given {
        Some(admin) => Server {
            admin,
            cluster: None,
        },
        None => start_cluster()?,
    };
    let server = Arc::new(server);
    *slot = Some(server.clone());
    Ok(server)
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/pg-cluster.sh")
}

fn start_cluster() -> Result<Server, Failure> {
    eprintln!("  (no WPOOL_BENCH_POSTGRES: starting a throwaway PostgreSQL cluster)");
    let out = std::process::Command::new("bash")
        .arg(script())
        .arg("start")
        .stderr(std::process::Stdio::inherit())
        .output()?;
    if !out.status.success() {
        return Err(
            "scripts/pg-cluster.sh could not start a PostgreSQL cluster; set \
                    WPOOL_BENCH_POSTGRES to a server where this user may create databases"
                .into(),
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let value = |name: &str| {
        stdout.lines().find_map(|line| {
            let rest = line.strip_prefix(&format!("export {name}="))?;
            Some(rest.trim_matches('\'').to_string())
        })
    };
    match (value("WPOOL_TEST_POSTGRES"), value("WPOOL_PG_CLUSTER")) {
        (Some(admin), Some(dir)) => Ok(Server {
            admin,
            cluster: Some(PathBuf::from(dir)),
        }),
        _ => Err(format!("scripts/pg-cluster.sh printed no URL: {stdout}").into()),
    }
}

/// Stops the cluster this run started, if any.
pub(crate) fn stop() {
    let server = SERVER.lock().unwrap_or_else(PoisonError::into_inner).take();
    if let Some(dir) = server.and_then(|s| s.cluster.clone()) {
        let status = std::process::Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(&dir)
            .status();
        if !status.is_ok_and(|s| s.success()) {
            eprintln!(
                "wpool-bench: could not stop the PostgreSQL cluster in {}",
                dir.display()
            );
        }
    }
}

/// A database created for one measurement; dropped with it.
struct Database {
    url: String,
    admin: String,
    name: String,
}

impl Database {
    fn create() -> Result<Self, Failure> {
        let server = server()?;
        let name = format!(
            "wpool_bench_{}",
            wpool::TaskId::new().to_string().to_lowercase()
        );
        sql(&server.admin, &format!("CREATE DATABASE {name}"))?;
        Ok(Self {
            url: with_database(&server.admin, &name)?,
            admin: server.admin.clone(),
            name,
        })
    }

    /// A new connection to the queue: another host, as far as it can tell.
    fn backend(&self, options: &PostgresOptions) -> Result<Arc<PostgresBackend>, Failure> {
        Ok(Arc::new(PostgresBackend::connect_blocking(
            &self.url, options,
        )?))
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = sql(
            &self.admin,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

fn sql(url: &str, statement: &str) -> Result<(), Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
        let connection = tokio::spawn(connection);
        client.batch_execute(statement).await?;
        drop(client);
        let _ = connection.await;
        Ok(())
    })
}

/// `url` naming database `name` instead of its own.
fn with_database(url: &str, name: &str) -> Result<String, Failure> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        format!("WPOOL_BENCH_POSTGRES must be a URL, postgres://user@host:port/database: {url}")
    })?;
    let (authority, query) = match rest.find(['/', '?']) {
        Some(at) => {
            let query = rest[at..].find('?').map(|q| &rest[at + q..]);
            (&rest[..at], query.unwrap_or(""))
        }
        None => (rest, ""),
    };
    Ok(format!("{scheme}://{authority}/{name}{query}"))
}

/// Durable submissions (or, with `wait`, submission to result) on one host
/// over PostgreSQL, with the submitters of the sled rows; `sled` is the
/// sled store's durable figure from the same run.
pub(crate) fn next_to_sled(
    count: usize,
    cores: usize,
    concurrency: usize,
    wait: bool,
    sled: f64,
) -> Result<Row, Failure> {
    let wasm = read(programs::P1_TRIVIAL);
    let database = Database::create()?;
    let mut config = PoolConfig::new();
    config.workers(cores);
    let pool = Pool::with_backend(config, database.backend(&PostgresOptions::new())?)?;
    let hash = register(&pool, &wasm)?;
    let rate = submitters(&pool, hash, count, concurrency, wait);
    drop(pool);
    let (what, note) = if wait {
        (
            "end to end (submit → run → result)",
            "one host; submission, claim and result each committed before seen",
        )
    } else {
        ("submit", "one host; acknowledged once committed")
    };
    Ok(Row::new(
        &format!("{what}, PostgreSQL, {concurrency} submitters"),
        "tasks/s",
        rate,
        "sled store, durable, same run",
        sled,
        note,
    ))
}

/// How long each task sleeps in the throughput rows.
const SLEEP_MS: u64 = 50;
/// Workers of each host in the throughput rows.
const HOST_WORKERS: usize = 4;

/// Tasks per second through `pools` sharing one queue: `count` sleeping
/// tasks submitted in one batch while every pool is paused, then all
/// resumed; timed from the resume to the last success. One untimed round
/// first (a task per worker) warms the connections and workers.
fn drain_rate(pools: &[Pool], count: usize) -> Result<f64, Failure> {
    let workers = pools.iter().map(Pool::max_workers).sum();
    drain(pools, workers, 0)?;
    drain(pools, count, workers)
}

/// [`drain_rate`] once, with `before` tasks already succeeded.
fn drain(pools: &[Pool], count: usize, before: usize) -> Result<f64, Failure> {
    let wasm = read(programs::P1_SLEEP);
    for pool in pools {
        pool.pause();
    }
    // Every host compiles the module before the clock starts.
    let mut hash = None;
    for pool in pools {
        hash = Some(register(pool, &wasm)?);
    }
    let hash = hash.ok_or("no host")?;
    let first = &pools[0];
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let specs = (0..count).map(|_| TaskSpec::new(hash, SLEEP_MS.to_string().into_bytes()));
        for submitted in first.submit_many(specs).await? {
            submitted?;
        }
        let started = Instant::now();
        for pool in pools {
            pool.resume();
        }
        loop {
            let counts = first.backend().counts().await?;
            let done = counts
                .get(TaskState::Succeeded)
                .saturating_sub(before as u64);
            if done >= count as u64 {
                break;
            }
            if counts.get(TaskState::Failed) > 0 {
                return Err("a sleeping task failed".into());
            }
            if started.elapsed() > Duration::from_secs(300) {
                return Err(format!("only {done} of {count} tasks ran in 300 s").into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(count as f64 / started.elapsed().as_secs_f64())
    })
}

/// Throughput of 1, 2 and 4 hosts on one database with tasks that sleep,
/// so that the queue is measured, not this machine's cores.
pub(crate) fn hosts(scale: Scale, _cores: usize) -> Result<Vec<Row>, Failure> {
    let rounds = scale.n(6, 40);
    let mut config = PoolConfig::new();
    config.workers(HOST_WORKERS);
    let ideal = HOST_WORKERS as f64 * 1000.0 / SLEEP_MS as f64;

    let sled = {
        let dir = tempfile_dir("hosts");
        let store = SledStore::open(&dir, &SledOptions::new())?;
        let pool = Pool::with_store(config.clone(), Arc::new(store))?;
        let rate = drain_rate(std::slice::from_ref(&pool), HOST_WORKERS * rounds);
        drop(pool);
        let _ = std::fs::remove_dir_all(&dir);
        rate?
    };
    let mut rows = Vec::new();
    let mut one_host = f64::NAN;
    for hosts in [1, 2, 4] {
        let database = Database::create()?;
        let pools = (0..hosts)
            .map(|_| {
                let backend = database.backend(&PostgresOptions::new())?;
                Ok(Pool::with_backend(config.clone(), backend)?)
            })
            .collect::<Result<Vec<Pool>, Failure>>()?;
        let rate = drain_rate(&pools, hosts * HOST_WORKERS * rounds)?;
        drop(pools);
        let what = format!(
            "{hosts} host{} × {HOST_WORKERS} workers on one PostgreSQL, {SLEEP_MS} ms tasks",
            if hosts == 1 { "" } else { "s" }
        );
        let note = format!(
            "hosts: a Pool over its own PostgresBackend each, in one process; \
             {} tasks per host, ideal {ideal:.0} tasks/s per host",
            HOST_WORKERS * rounds
        );
        if hosts == 1 {
            one_host = rate;
            rows.push(Row::new(
                &what,
                "tasks/s",
                rate,
                "one host, sled store, same tasks",
                sled,
                &note,
            ));
        } else {
            rows.push(Row::new(
                &what,
                "tasks/s",
                rate,
                "1 host on PostgreSQL",
                one_host,
                &note,
            ));
        }
    }
    Ok(rows)
}

/// Milliseconds from another host's submission to the start of the task
/// on an idle host, `samples` times: the median and the 90th percentile.
fn submit_to_start(listen: bool, samples: usize) -> Result<(f64, f64), Failure> {
    let wasm = read(programs::P1_TRIVIAL);
    let database = Database::create()?;
    let mut config = PoolConfig::new();
    config.workers(1);
    let host = Pool::with_backend(
        config.clone(),
        database.backend(PostgresOptions::new().listen(listen))?,
    )?;
    // The submitting host takes no work: only `host` runs tasks.
    let submitter = Pool::with_backend(config, database.backend(&PostgresOptions::new())?)?;
    submitter.pause();
    let hash = register(&submitter, &wasm)?;
    register(&host, &wasm)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut times = runtime.block_on(async {
        let mut events = host.subscribe();
        let mut times = Vec::with_capacity(samples);
        for sample in 0..samples {
            // The idle host's poll timer restarts when its last task
            // ends: spread the submissions over a whole poll interval
            // after that, so that polling is measured on average, not at
            // the worst point of its interval.
            let pause = (sample as u64 * 379) % 1000;
            tokio::time::sleep(Duration::from_millis(pause)).await;
            let started = Instant::now();
            let id = submitter
                .submit(TaskSpec::new(hash, Vec::new()))
                .await?
                .id();
            let mut start = None;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                let event = match tokio::time::timeout_at(deadline, events.recv()).await {
                    Err(_) => return Err::<_, Failure>("the idle host never ran the task".into()),
                    Ok(Err(wpool::EventsError::Lagged(_))) => continue,
                    Ok(Err(e)) => return Err(e.into()),
                    Ok(Ok(event)) => event,
                };
                if event.id != id {
                    continue;
                }
                match event.kind {
                    EventKind::Started { .. } => {
                        start.get_or_insert_with(|| started.elapsed().as_secs_f64() * 1e3);
                    }
                    EventKind::Succeeded => break,
                    // The submitting host's event, heard from the database.
                    EventKind::Submitted => {}
                    other => return Err(format!("the task ended {other:?}").into()),
                }
            }
            times.push(start.ok_or("no start event")?);
        }
        Ok(times)
    })?;
    drop(host);
    drop(submitter);
    times.sort_by(f64::total_cmp);
    Ok((
        crate::rows::percentile(&times, 0.5),
        crate::rows::percentile(&times, 0.9),
    ))
}

/// Time from submit to start on an idle host, woken by `NOTIFY`, next to
/// the same with notifications off (found by polling).
pub(crate) fn wake(scale: Scale, _cores: usize) -> Result<Vec<Row>, Failure> {
    let samples = scale.n(5, 30);
    let (notify, notify_p90) = submit_to_start(true, samples)?;
    let (polling, polling_p90) = submit_to_start(false, samples)?;
    Ok(vec![Row::new(
        "submit → start on an idle host, PostgreSQL, NOTIFY",
        "ms",
        notify,
        "notifications off (polling, 1 s)",
        polling,
        &format!(
            "median of {samples}, submitted by another host; 90th percentile {notify_p90:.1} ms \
             vs {polling_p90:.0} ms"
        ),
    )])
}
