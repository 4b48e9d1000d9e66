//! `wpool serve`: the daemon. Opens the data directory (or the PostgreSQL
//! queue given with `--store`), runs the pool and serves the HTTP API until
//! SIGINT or SIGTERM.
//!
//! Settings come from, highest first: flags, environment variables
//! (`WPOOL_*`), the config file (`--config`, TOML or JSON), the defaults.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use clap::Args;
use serde::Deserialize;

use super::server::types::{HumanDuration, HumanSize};
use super::server::{self, ServerConfig};
use super::{Failure, exit};
use crate::store::{SledOptions, SledStore};
use crate::units::{format_duration, parse_duration, parse_size};
use crate::{Pool, PoolConfig};

/// Run the daemon: a pool over a data directory, and its HTTP API.
///
/// Binds 127.0.0.1:7878 by default. Binding any other address requires a
/// bearer token, which every request must then carry. SIGINT or SIGTERM
/// stops accepting, lets running tasks finish within the grace period,
/// kills the rest (they run again at the next start) and exits 0.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  wpool serve\n  wpool serve --workers 8 --data-dir /var/lib/wpool --listen 0.0.0.0:7878 --token \"$TOKEN\"\n  wpool serve --config wpool.toml"
)]
pub(crate) struct ServeArgs {
    /// Where tasks, results and modules are kept. Default: ./wpool-data.
    /// With `--store`, only this host's compiled modules and uploads in
    /// progress (give each host its own).
    #[arg(long, env = "WPOOL_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Keep the queue (tasks, results, modules) in PostgreSQL, shared by
    /// every host given the same database:
    /// `postgres://user[:password]@host:5432/database`. Default: the
    /// embedded store in the data directory.
    #[arg(long, env = "WPOOL_STORE", value_name = "URL", hide_env_values = true)]
    store: Option<String>,
    /// The address to listen on; port 0 picks a free port. Default:
    /// 127.0.0.1:7878.
    #[arg(long, env = "WPOOL_LISTEN", value_name = "ADDR:PORT")]
    listen: Option<String>,
    /// How many tasks run at once. Default: one per core.
    #[arg(long, env = "WPOOL_WORKERS")]
    workers: Option<usize>,
    /// A bearer token every request must carry (required to listen on a
    /// non-loopback address).
    #[arg(long, env = "WPOOL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A config file, TOML (`.toml`) or JSON, with any of: data_dir,
    /// store, listen, workers, token, max_module_size, max_input_size,
    /// max_queued, stop_grace, lease_ttl, body_timeout, header_timeout,
    /// max_connections, max_body_bytes_in_flight, max_wait, read_only_dirs,
    /// scratch_root, max_scratch, retention, max_results, max_stored_output,
    /// claim_ahead, max_workers, max_memory, default_timeout, default_memory,
    /// default_fuel, default_max_output.
    ///
    /// `read_only_dirs` grants host directories to tasks, read-only:
    /// `[[read_only_dirs]]` with `host`, `guest` and optionally `modules`
    /// (`"all"`, the default; `{ name = "python" }`; `{ hash = "…" }`).
    #[arg(long, env = "WPOOL_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// The largest module accepted, e.g. `64MiB`. Default: 64MiB.
    #[arg(long, env = "WPOOL_MAX_MODULE_SIZE", value_parser = parse_size)]
    max_module_size: Option<u64>,
    /// The largest task input accepted, e.g. `16MiB`. Default: 16MiB.
    #[arg(long, env = "WPOOL_MAX_INPUT_SIZE", value_parser = parse_size)]
    max_input_size: Option<u64>,
    /// The most tasks waiting at once; past it submissions get 429.
    /// Default: 1000000.
    #[arg(long, env = "WPOOL_MAX_QUEUED")]
    max_queued: Option<usize>,
    /// How long running tasks may finish at shutdown before they are
    /// killed (and queued again). Default: 30s.
    #[arg(long, env = "WPOOL_STOP_GRACE", value_parser = parse_duration)]
    stop_grace: Option<Duration>,
    /// How long a running task's lease lasts without a heartbeat (renewed
    /// every third of it). With a shared store (`--store`), how long the
    /// tasks of a host that died wait before another host runs them.
    /// Default: 30s.
    #[arg(long, env = "WPOOL_LEASE_TTL", value_parser = parse_duration)]
    lease_ttl: Option<Duration>,
    /// How long a request body may take to arrive. Default: 30s.
    #[arg(long, env = "WPOOL_BODY_TIMEOUT", value_parser = parse_duration)]
    body_timeout: Option<Duration>,
    /// How long a connection may take to send a request's line and headers
    /// (an idle keep-alive connection too) before it is closed. Default: 10s.
    #[arg(long, env = "WPOOL_HEADER_TIMEOUT", value_parser = parse_duration)]
    header_timeout: Option<Duration>,
    /// The most connections open at once; more wait until one closes.
    /// Default: 1024, lowered to fit the process's file-descriptor limit
    /// (keeping 64 descriptors for the store and the module cache).
    #[arg(long, env = "WPOOL_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// The most request-body bytes received at once across connections,
    /// e.g. `256MiB`; past it requests get 503 with Retry-After.
    /// Default: 256MiB.
    #[arg(long, env = "WPOOL_MAX_BODY_BYTES_IN_FLIGHT", value_parser = parse_size)]
    max_body_bytes_in_flight: Option<u64>,
    /// The longest long poll (`?wait=`); longer waits are cut to it.
    /// Default: 5m.
    #[arg(long, env = "WPOOL_MAX_WAIT", value_parser = parse_duration)]
    max_wait: Option<Duration>,
    /// Grant a host directory to every module's tasks, read-only, at a
    /// guest path: `HOST_DIR:GUEST_PATH`; repeat for several. (Grants to
    /// some modules only: `read_only_dirs` in the config file.)
    #[arg(long = "read-only", value_name = "HOST:GUEST", value_parser = super::settings::parse_read_only)]
    read_only: Vec<crate::ReadOnlyDir>,
    /// The largest scratch directory a module may ask for, e.g. `64MiB`;
    /// 0 gives none. Default: 64MiB.
    #[arg(long, env = "WPOOL_MAX_SCRATCH", value_parser = parse_size)]
    max_scratch: Option<u64>,
    /// The most workers the running daemon can be set to (`PUT /v1/workers`,
    /// `wpool workers N`). Default: 4 times the worker count, at least 8.
    #[arg(long, env = "WPOOL_MAX_WORKERS")]
    max_workers: Option<usize>,
    /// The largest memory limit a task may ask for, e.g. `2GiB`: from 64KiB
    /// to 4GiB (the address space reserved for each memory slot, whatever
    /// this is; all a 32-bit wasm memory can address). Default: 1GiB.
    #[arg(long, env = "WPOOL_MAX_MEMORY", value_parser = parse_size)]
    max_memory: Option<u64>,
    /// The timeout of a task that asks for none, e.g. `1m`. Default: 30s.
    #[arg(long, env = "WPOOL_DEFAULT_TIMEOUT", value_parser = parse_duration)]
    default_timeout: Option<Duration>,
    /// The memory limit of a task that asks for none, e.g. `256MiB`, at most
    /// --max-memory. Default: 128MiB.
    #[arg(long, env = "WPOOL_DEFAULT_MEMORY", value_parser = parse_size)]
    default_memory: Option<u64>,
    /// The fuel budget of a task that asks for none, e.g. `10G`. Default:
    /// unlimited (fuel is still counted).
    #[arg(long, env = "WPOOL_DEFAULT_FUEL", value_parser = crate::units::parse_count)]
    default_fuel: Option<u64>,
    /// The output limit of a task that asks for none, e.g. `1MiB`. Default:
    /// 16MiB.
    #[arg(long, env = "WPOOL_DEFAULT_MAX_OUTPUT", value_parser = parse_size)]
    default_max_output: Option<u64>,
    /// How long finished tasks and their results are kept, e.g. `7d`,
    /// `12h`. Default: 7d.
    #[arg(long, env = "WPOOL_RETENTION", value_parser = parse_duration)]
    retention: Option<Duration>,
    /// The most finished tasks kept; the oldest go first. Default: no
    /// limit (only --retention applies).
    #[arg(long, env = "WPOOL_MAX_RESULTS")]
    max_results: Option<u64>,
    /// The most bytes of large task outputs (over 64 KiB, kept as files in
    /// the data directory's `outputs/`) kept at once, e.g. `8GiB`; while
    /// they take this much, submissions get 503 `storage_full` until
    /// retention removes old results. Default: 8GiB.
    #[arg(long, env = "WPOOL_MAX_STORED_OUTPUT", value_parser = parse_size)]
    max_stored_output: Option<u64>,
    /// The most tasks claimed ahead of the free workers, so that short
    /// tasks share their durable claims; 0 claims a task only when a
    /// worker is free for it. When the host dies, a task claimed ahead
    /// counts an interruption that never ends it (its run may not have
    /// started). Default: 512 on the sled store, 0 on PostgreSQL (where
    /// another host's free worker could run what this one holds).
    #[arg(long, env = "WPOOL_CLAIM_AHEAD")]
    claim_ahead: Option<usize>,
}

/// The config file's settings; every one optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    store: Option<String>,
    listen: Option<String>,
    workers: Option<usize>,
    token: Option<String>,
    max_module_size: Option<HumanSize>,
    max_input_size: Option<HumanSize>,
    max_queued: Option<usize>,
    stop_grace: Option<HumanDuration>,
    lease_ttl: Option<HumanDuration>,
    body_timeout: Option<HumanDuration>,
    header_timeout: Option<HumanDuration>,
    max_connections: Option<usize>,
    max_body_bytes_in_flight: Option<HumanSize>,
    max_wait: Option<HumanDuration>,
    #[serde(default)]
    read_only_dirs: Vec<crate::ReadOnlyDir>,
    scratch_root: Option<PathBuf>,
    max_scratch: Option<HumanSize>,
    retention: Option<HumanDuration>,
    max_results: Option<u64>,
    max_workers: Option<usize>,
    max_memory: Option<HumanSize>,
    default_timeout: Option<HumanDuration>,
    default_memory: Option<HumanSize>,
    default_fuel: Option<u64>,
    default_max_output: Option<HumanSize>,
    max_stored_output: Option<HumanSize>,
    claim_ahead: Option<usize>,
}

fn read_config(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    let is_json = path.extension().is_some_and(|e| e == "json");
    if is_json {
        serde_json::from_str(&text)
            .with_context(|| format!("the config file {} is not valid", path.display()))
    } else {
        toml::from_str(&text)
            .with_context(|| format!("the config file {} is not valid", path.display()))
    }
}

pub(crate) fn execute(args: ServeArgs) -> Result<u8, Failure> {
    let file = match &args.config {
        Some(path) => read_config(path).map_err(Failure::bad_input)?,
        None => FileConfig::default(),
    };
    let data_dir = args
        .data_dir
        .or(file.data_dir)
        .unwrap_or_else(|| PathBuf::from("wpool-data"));
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| "127.0.0.1:7878".into());
    let token = args.token.or(file.token).filter(|t| !t.is_empty());
    let mut server_config = ServerConfig {
        token: token.clone(),
        ..ServerConfig::default()
    };
    if let Some(size) = args.max_module_size.or(file.max_module_size.map(|s| s.0)) {
        server_config.max_module_size = size;
    }
    if let Some(size) = args.max_input_size.or(file.max_input_size.map(|s| s.0)) {
        server_config.max_input_size = size;
    }
    if let Some(d) = args.body_timeout.or(file.body_timeout.map(|d| d.0)) {
        server_config.body_timeout = d;
    }
    if let Some(d) = args.header_timeout.or(file.header_timeout.map(|d| d.0)) {
        if d.is_zero() {
            return Err(Failure::bad_input(anyhow!(
                "--header-timeout must be longer than zero, e.g. 10s"
            )));
        }
        server_config.header_timeout = d;
    }
    match args.max_connections.or(file.max_connections) {
        Some(0) => {
            return Err(Failure::bad_input(anyhow!(
                "--max-connections must be at least 1"
            )));
        }
        Some(n) => {
            if let Some(fit) = connections_that_fit(n) {
                eprintln!(
                    "wpool: warning: --max-connections {n} is more than the file-descriptor \
                     limit leaves room for ({fit}); when descriptors run out, new connections \
                     wait until others close. Raise it with `ulimit -n`"
                );
            }
            server_config.max_connections = n;
        }
        None => {
            if let Some(fit) = connections_that_fit(server_config.max_connections) {
                eprintln!(
                    "wpool: at most {fit} connections (not {}), to fit the file-descriptor \
                     limit; raise it with `ulimit -n` to allow more",
                    server_config.max_connections
                );
                server_config.max_connections = fit;
            }
        }
    }
    if let Some(n) = args
        .max_body_bytes_in_flight
        .or(file.max_body_bytes_in_flight.map(|s| s.0))
    {
        if n == 0 {
            return Err(Failure::bad_input(anyhow!(
                "--max-body-bytes-in-flight must be more than zero, e.g. 256MiB"
            )));
        }
        server_config.max_body_bytes_in_flight = n;
    }
    if let Some(d) = args.max_wait.or(file.max_wait.map(|d| d.0)) {
        server_config.max_wait = d;
    }
    server_config.upload_dir = Some(data_dir.join("uploads"));

    let addr = resolve(&listen).map_err(Failure::bad_input)?;
    if !addr.ip().is_loopback() && token.is_none() {
        return Err(Failure::bad_input(anyhow!(
            "refusing to listen on {addr} without a token: anyone who reaches it could run \
             code on this machine; set --token (or WPOOL_TOKEN), or listen on 127.0.0.1"
        )));
    }

    let mut pool_config = PoolConfig::new();
    if let Some(workers) = args.workers.or(file.workers) {
        if workers == 0 {
            return Err(Failure::bad_input(anyhow!("--workers must be at least 1")));
        }
        pool_config.workers(workers);
    }
    let workers = pool_config.engine_mut().worker_count();
    let max_workers = args
        .max_workers
        .or(file.max_workers)
        .unwrap_or((workers * 4).max(8));
    if max_workers < workers {
        return Err(Failure::bad_input(anyhow!(
            "--max-workers ({max_workers}) is below --workers ({workers}): raise it, or lower \
             --workers"
        )));
    }
    pool_config.engine_mut().max_workers(max_workers);
    let max_memory = args
        .max_memory
        .or(file.max_memory.map(|s| s.0))
        .unwrap_or(crate::EngineConfig::DEFAULT_MAX_MEMORY);
    check_max_memory(max_memory)?;
    pool_config.engine_mut().max_memory(max_memory);
    let mut limits = crate::Limits::default();
    if let Some(timeout) = args.default_timeout.or(file.default_timeout.map(|d| d.0)) {
        limits.timeout = timeout;
    }
    if let Some(memory) = args.default_memory.or(file.default_memory.map(|s| s.0)) {
        limits.memory = memory;
    }
    if let Some(fuel) = args.default_fuel.or(file.default_fuel) {
        limits.fuel = Some(fuel);
    }
    if let Some(max) = args
        .default_max_output
        .or(file.default_max_output.map(|s| s.0))
    {
        limits.max_output = max;
    }
    limits
        .validate(max_memory)
        .map_err(|e| Failure::bad_input(anyhow!("the default task limits: {e}")))?;
    pool_config.engine_mut().default_limits(limits);
    if let Some(max) = args.max_queued.or(file.max_queued) {
        pool_config.max_queued(max);
    }
    if let Some(retention) = args.retention.or(file.retention.map(|d| d.0)) {
        pool_config.retention(retention);
    }
    if let Some(max) = args.max_results.or(file.max_results) {
        pool_config.max_results(max);
    }
    if let Some(max) = args
        .max_stored_output
        .or(file.max_stored_output.map(|s| s.0))
    {
        pool_config.max_stored_output(max);
    }
    if let Some(tasks) = args.claim_ahead.or(file.claim_ahead) {
        pool_config.claim_ahead(tasks);
    }
    let grace = args
        .stop_grace
        .or(file.stop_grace.map(|d| d.0))
        .unwrap_or(Duration::from_secs(30));
    pool_config.stop_grace(grace);
    if let Some(ttl) = args.lease_ttl.or(file.lease_ttl.map(|d| d.0)) {
        pool_config.lease_ttl(ttl);
    }
    pool_config
        .engine_mut()
        .artifact_dir(data_dir.join("artifacts"));
    for dir in file.read_only_dirs.iter().chain(&args.read_only) {
        pool_config.engine_mut().read_only_dir(dir.clone());
    }
    if let Some(root) = &file.scratch_root {
        pool_config.engine_mut().scratch_root(root);
    }
    if let Some(max) = args.max_scratch.or(file.max_scratch.map(|s| s.0)) {
        pool_config.engine_mut().max_scratch(max);
    }

    let store_url = args.store.or(file.store).filter(|url| !url.is_empty());
    let (pool, location) = match store_url {
        Some(url) => open_shared(&url, &data_dir, pool_config)?,
        None => {
            let store = SledStore::open(&data_dir, &SledOptions::new())
                .with_context(|| format!("cannot open the data directory {}", data_dir.display()))
                .map_err(|e| Failure::new(exit::REFUSED, e))?;
            // Only now that the store is ours: another daemon on this
            // directory would have been refused above, with its uploads
            // left alone.
            remove_stale_uploads(&data_dir.join("uploads"));
            let pool = Pool::with_store(pool_config, Arc::new(store)).map_err(pool_failure)?;
            (pool, format!("data {}", data_dir.display()))
        }
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("wpool-http")
        .enable_all()
        .build()
        .context("cannot start the server's threads")
        .map_err(Failure::internal)?;
    let outcome = runtime.block_on(run(pool.clone(), addr, server_config, &location, grace));
    drop(runtime);
    drop(pool);
    outcome.map(|()| exit::OK)
}

/// Refuses a `--max-memory` (`WPOOL_MAX_MEMORY`, `max_memory`) the engine
/// cannot give a task.
fn check_max_memory(bytes: u64) -> Result<(), Failure> {
    use crate::units::format_size;
    let most = format_size(crate::EngineConfig::MAX_MEMORY);
    if bytes < 64 << 10 {
        return Err(Failure::bad_input(anyhow!(
            "--max-memory (WPOOL_MAX_MEMORY, max_memory) is {}, less than one wasm page: \
             give at least 64KiB, e.g. 1GiB",
            format_size(bytes)
        )));
    }
    if bytes > crate::EngineConfig::MAX_MEMORY {
        return Err(Failure::bad_input(anyhow!(
            "--max-memory (WPOOL_MAX_MEMORY, max_memory) is {}, more than the {most} the \
             engine can give a task (the pooling allocator reserves {most} of address space \
             for each memory slot, and a 32-bit wasm memory cannot address more): give at \
             most 4GiB",
            format_size(bytes),
        )));
    }
    Ok(())
}

fn pool_failure(e: crate::Error) -> Failure {
    match e {
        crate::Error::Config(_) => Failure::bad_input(anyhow::Error::new(e)),
        e => Failure::internal(anyhow::Error::new(e).context("cannot start the pool")),
    }
}

/// A pool over the PostgreSQL queue at `url`, shared with the other hosts
/// given it; `data_dir` keeps this host's compiled modules and uploads.
/// Returns the pool and where its queue is, for the log.
#[cfg(feature = "postgres")]
fn open_shared(url: &str, data_dir: &Path, config: PoolConfig) -> Result<(Pool, String), Failure> {
    use crate::backend::{PostgresBackend, PostgresOptions};
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(Failure::bad_input(anyhow!(
            "--store takes a PostgreSQL URL, e.g. postgres://user@host:5432/database \
             (without --store, the queue is kept in --data-dir)"
        )));
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))
        .map_err(|e| Failure::new(exit::REFUSED, e))?;
    let backend =
        PostgresBackend::connect_blocking(url, &PostgresOptions::new()).map_err(|e| match e {
            crate::Error::Config(_) => Failure::bad_input(anyhow::Error::new(e)),
            e => Failure::new(
                exit::REFUSED,
                anyhow::Error::new(e).context("cannot open the store"),
            ),
        })?;
    remove_stale_uploads(&data_dir.join("uploads"));
    let location = format!(
        "store postgres {}, data {}",
        backend.target(),
        data_dir.display()
    );
    let pool = Pool::with_backend(config, Arc::new(backend)).map_err(pool_failure)?;
    Ok((pool, location))
}

#[cfg(not(feature = "postgres"))]
fn open_shared(
    _url: &str,
    _data_dir: &Path,
    _config: PoolConfig,
) -> Result<(Pool, String), Failure> {
    Err(Failure::bad_input(anyhow!(
        "--store needs the PostgreSQL backend, which this wpool was built without \
         (cargo feature `postgres`)"
    )))
}

/// File descriptors kept for the store, the compiled-module cache, logs and
/// the listener, beside client connections.
const RESERVED_FDS: u64 = 64;

/// A lower connection limit than `wanted` when the process's soft limit of
/// open files (`RLIMIT_NOFILE`, read from `/proc/self/limits`) leaves no
/// room for `wanted` connections plus [`RESERVED_FDS`]; `None` when it does,
/// or when the limit cannot be read.
fn connections_that_fit(wanted: usize) -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft: u64 = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let fit = usize::try_from(soft.saturating_sub(RESERVED_FDS).max(1)).ok()?;
    (fit < wanted).then_some(fit)
}

/// Removes module uploads a previous run left behind (it was killed while
/// one arrived).
fn remove_stale_uploads(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with("upload-") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn resolve(listen: &str) -> anyhow::Result<SocketAddr> {
    listen
        .to_socket_addrs()
        .with_context(|| {
            format!("`{listen}` is not an address to listen on: write e.g. 127.0.0.1:7878")
        })?
        .next()
        .ok_or_else(|| anyhow!("`{listen}` resolves to no address"))
}

async fn run(
    pool: Pool,
    addr: SocketAddr,
    config: ServerConfig,
    location: &str,
    grace: Duration,
) -> Result<(), Failure> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
        .map_err(|e| Failure::new(exit::REFUSED, e))?;
    let local = listener
        .local_addr()
        .context("the listener has no address")
        .map_err(Failure::internal)?;
    let workers = pool.stats().await.map(|s| s.workers).unwrap_or(0);
    eprintln!(
        "wpool: listening on http://{local} ({location}, {workers} worker{}{})",
        if workers == 1 { "" } else { "s" },
        if config.token.is_some() {
            ", token required"
        } else {
            ""
        }
    );
    server::serve(listener, pool.clone(), config, shutdown_signal())
        .await
        .context("the server failed")
        .map_err(Failure::internal)?;
    eprintln!(
        "wpool: shutting down: running tasks have {} to finish",
        format_duration(grace)
    );
    tokio::select! {
        stopped = pool.stop() => stopped.context("stopping the pool").map_err(Failure::internal)?,
        () = shutdown_signal() => {
            eprintln!("wpool: second signal: killing running tasks (they run again at the next start)");
            pool.stop_with_grace(Duration::ZERO)
                .await
                .context("stopping the pool")
                .map_err(Failure::internal)?;
        }
    }
    let waiting = pool
        .stats()
        .await
        .map(|s| {
            s.counts.get(crate::TaskState::Queued)
                + s.counts.get(crate::TaskState::Scheduled)
                + s.counts.get(crate::TaskState::Running)
        })
        .unwrap_or(0);
    eprintln!("wpool: stopped; {waiting} unfinished tasks kept for the next start");
    Ok(())
}

/// Completes at SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
