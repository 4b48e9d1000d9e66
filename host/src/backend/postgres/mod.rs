//! The PostgreSQL backend: one queue shared by many hosts.
//!
//! Every host opens the same database ([`PostgresBackend::connect`]); each
//! claims ready tasks with `SELECT … FOR UPDATE SKIP LOCKED` (priority,
//! then submission order), so that no two hosts ever take the same task
//! and none waits for another. A claim is a lease: a token new for every
//! claim (from a sequence) and an expiry taken from the database's clock.
//! Renewing, completing and releasing are fenced by the token
//! (`WHERE id = … AND lease_token = … AND state = 'running'`): a host that
//! lost its lease cannot overwrite the result of the run that replaced it.
//! A lease not renewed in time is expired by whichever host looks first
//! (rows locked with `SKIP LOCKED`, so hosts never expire a lease twice).
//! Opening the database does not expire anything: other hosts may be
//! running the tasks, and only time tells a dead host from a live one.
//!
//! Every call returns once its transaction has committed, with
//! `synchronous_commit` on: what a caller is told is durable. Each task
//! transition reads the record, applies the [`TaskRecord`] method that
//! makes it (the state machine lives there, not in SQL) and writes it back
//! in the same transaction, with the row locked.
//!
//! # When the server goes away
//!
//! A server out of reach (connection refused, closed or broken, a pool
//! timeout, SQLSTATE `08*`, `57P01`–`57P03`, `53300`, `25P03`) is
//! [`Error::Unavailable`], not [`Error::Store`]: the call may work once the
//! server is back, and the pool waits for it (HTTP answers 503
//! `store_unavailable`). Broken connections are dropped from the pool and
//! made again at the next call. A session stalled inside a transaction is
//! ended by the server after 30 s (`idle_in_transaction_session_timeout`),
//! so that a paused host cannot keep rows locked, and leases unexpired.
//!
//! Transactions that make a task ready `NOTIFY wpool_ready`; a connection
//! of its own `LISTEN`s and wakes the pool
//! ([`Backend::wait_for_work`]). Polling stays the fallback. The pools'
//! events go from host to host the same way (`wpool_events`, see
//! [`events`]), so each host's event stream shows the whole queue.
//!
//! # Why tokio-postgres and deadpool-postgres
//!
//! The driver is [`tokio_postgres`], pooled by [`deadpool_postgres`],
//! rather than sqlx: it builds in a fraction of the time (no macros, no
//! compile-time query checking against a live database, no drivers for
//! other databases), and its `Connection` hands out `NOTIFY` messages
//! directly ([`tokio_postgres::Connection::poll_message`]), which is what
//! waking the pool needs. Connections are plain TCP or Unix sockets: TLS is
//! not built in yet, so reach a remote server over a trusted network or a
//! tunnel.
//!
//! # Runtime
//!
//! The backend runs its connections on a small tokio runtime of its own
//! (one thread), and every call is a task on it. Callers on any runtime
//! (the pool's executor, the HTTP server, a test) share the connections,
//! and none of them has to outlive the backend.

mod events;
mod listen;
mod queue;
mod record;
mod schema;

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::Notify;
use tokio_postgres::NoTls;

pub use self::schema::SCHEMA_VERSION;
use super::{Backend, Cancelled, Claim, Completed, Enqueued, LeaseState, Tick};
use crate::store::{StateCounts, StoredModule, TaskFilter};
use crate::task::{Completion, Lease, Millis, ModuleHash, TaskId, TaskRecord};
use crate::{Error, ModuleSettings, Result};

/// How long a session may wait inside a transaction before the server
/// ends it (its transaction rolled back, its locks released). Every
/// transaction of this backend is a few statements sent back to back.
const IDLE_IN_TRANSACTION: Duration = Duration::from_secs(30);

/// A transaction on a pooled connection.
type Tx<'a> = deadpool_postgres::Transaction<'a>;

/// How a [`PostgresBackend`] connects.
#[derive(Clone, Debug)]
pub struct PostgresOptions {
    max_connections: usize,
    connect_timeout: Duration,
    listen: bool,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            max_connections: 16,
            connect_timeout: Duration::from_secs(10),
            listen: true,
        }
    }
}

impl PostgresOptions {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// The most connections the backend opens at once (besides the one
    /// that listens for new work). Default: 16.
    pub fn max_connections(&mut self, max: usize) -> &mut Self {
        self.max_connections = max.max(1);
        self
    }

    /// How long connecting may take, when the URL does not say
    /// (`connect_timeout`). Default: 10 s.
    pub fn connect_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.connect_timeout = timeout;
        self
    }

    /// Whether a connection of its own `LISTEN`s for work that other
    /// hosts make ready, to wake an idle pool at once. Off, an idle pool
    /// finds that work only when it next polls
    /// ([`PoolConfig::poll_interval`](crate::PoolConfig::poll_interval)),
    /// and the backend holds one connection fewer; the other hosts' events
    /// are not heard either (their results reach waiters by polling).
    /// Default: on.
    pub fn listen(&mut self, on: bool) -> &mut Self {
        self.listen = on;
        self
    }
}

/// A [`Backend`] in a PostgreSQL database, shared by every host that opens
/// it.
///
/// Hosts claim tasks with `SELECT … FOR UPDATE SKIP LOCKED` (priority, then
/// submission order), each claim a lease whose expiry comes from the
/// database's clock; renewing, completing and releasing are fenced by the
/// lease's token, so a host that lost a lease cannot overwrite the run
/// that replaced it. Connecting never expires a lease: other hosts may be
/// running those tasks. Every call returns once its transaction has
/// committed. A submission wakes the other hosts (`LISTEN`/`NOTIFY`,
/// [`Backend::wait_for_work`]); polling stays the fallback.
///
/// Tables are created, or migrated, when a host connects (see
/// [`POSTGRES_SCHEMA_VERSION`](crate::backend::POSTGRES_SCHEMA_VERSION)).
/// Connections are plain TCP or Unix sockets: no TLS yet.
///
/// ```no_run
/// use std::sync::Arc;
/// use wpool::backend::PostgresBackend;
/// use wpool::{Pool, PoolConfig};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let backend = PostgresBackend::connect("postgres://wpool@db.internal:5432/wpool").await?;
/// let pool = Pool::with_backend(PoolConfig::new(), Arc::new(backend))?;
/// # drop(pool);
/// # Ok(())
/// # }
/// ```
pub struct PostgresBackend {
    shared: Arc<Shared>,
    /// Runs the connections and every call; shut down on drop.
    runtime: Option<tokio::runtime::Runtime>,
}

/// What the calls share, on the backend's runtime.
struct Shared {
    pool: Pool,
    /// Where the database is, for messages (no password).
    target: String,
    /// Woken when another host makes work ready.
    ready: Arc<Notify>,
    /// The pool's events, to and from the other hosts.
    events: events::EventBus,
}

impl std::fmt::Debug for PostgresBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresBackend")
            .field("database", &self.shared.target)
            .finish_non_exhaustive()
    }
}

impl Drop for PostgresBackend {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Connections close; an open transaction is rolled back by the
            // server. Never blocks, so dropping in async code is fine.
            runtime.shutdown_background();
        }
    }
}

impl PostgresBackend {
    /// Connects to the database at `url` (`postgres://user@host:port/db`,
    /// or the key-value form `host=… dbname=…`), creating or migrating
    /// its tables. Fails with [`Error::Unavailable`] when the server cannot
    /// be reached, and with [`Error::Store`] when the database does not
    /// exist or holds a schema newer than this build knows.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, &PostgresOptions::default()).await
    }

    /// [`PostgresBackend::connect`] with options.
    pub async fn connect_with(url: &str, options: &PostgresOptions) -> Result<Self> {
        let (runtime, config, target) = prepare(url, options)?;
        let started = joined(runtime.spawn(start(config, options.clone(), target)).await);
        Self::started(runtime, started)
    }

    /// [`PostgresBackend::connect_with`] for callers outside async code
    /// (it blocks the thread until the database answers). Also callable
    /// from async code, which it blocks meanwhile.
    pub fn connect_blocking(url: &str, options: &PostgresOptions) -> Result<Self> {
        let (runtime, config, target) = prepare(url, options)?;
        let handle = runtime.handle().clone();
        let options = options.clone();
        let started = std::thread::scope(|scope| {
            scope
                .spawn(|| handle.block_on(start(config, options, target)))
                .join()
        })
        .map_err(|_| Error::Host("connecting to PostgreSQL panicked".into()))
        .and_then(|started| started);
        Self::started(runtime, started)
    }

    fn started(runtime: tokio::runtime::Runtime, started: Result<Arc<Shared>>) -> Result<Self> {
        match started {
            Ok(shared) => Ok(Self {
                shared,
                runtime: Some(runtime),
            }),
            Err(e) => {
                // Never blocks: callers may be in async code.
                runtime.shutdown_background();
                Err(e)
            }
        }
    }

    /// Where the database is (host, port and database name; never the
    /// password).
    pub fn target(&self) -> &str {
        &self.shared.target
    }

    /// Runs `call` on the backend's runtime.
    async fn call<T, F, Fut>(&self, call: F) -> Result<T>
    where
        F: FnOnce(Arc<Shared>) -> Fut,
        Fut: Future<Output = Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        let Some(runtime) = &self.runtime else {
            return Err(Error::Store("the PostgreSQL backend is closed".into()));
        };
        joined(runtime.spawn(call(self.shared.clone())).await)
    }
}

fn joined<T>(joined: std::result::Result<Result<T>, tokio::task::JoinError>) -> Result<T> {
    joined.map_err(|e| Error::Store(format!("a PostgreSQL call did not finish: {e}")))?
}

/// Parses the URL and builds the runtime.
fn prepare(
    url: &str,
    options: &PostgresOptions,
) -> Result<(tokio::runtime::Runtime, tokio_postgres::Config, String)> {
    let mut config = tokio_postgres::Config::from_str(url).map_err(|e| {
        Error::Config(format!(
            "not a PostgreSQL URL ({e}): write e.g. postgres://user@host:5432/database"
        ))
    })?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(options.connect_timeout);
    }
    if config.get_application_name().is_none() {
        config.application_name("wpool");
    }
    // Durable before seen, whatever the server's default. A host that
    // stalls inside a transaction (paused, swapped out, cut off) must not
    // hold its rows locked for long: others skip locked rows, so a lease
    // it holds locked would never expire. The server ends such a session
    // after IDLE_IN_TRANSACTION (unless the URL's options say otherwise).
    let mut server_options = config.get_options().unwrap_or_default().to_string();
    server_options.push_str(" -c synchronous_commit=on");
    if !server_options.contains("idle_in_transaction_session_timeout") {
        server_options.push_str(&format!(
            " -c idle_in_transaction_session_timeout={}",
            IDLE_IN_TRANSACTION.as_millis()
        ));
    }
    config.options(server_options.trim());
    let target = describe_target(&config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("wpool-postgres")
        .enable_all()
        .build()
        .map_err(|e| Error::Host(format!("cannot start the PostgreSQL backend's thread: {e}")))?;
    Ok((runtime, config, target))
}

/// `host:port/database`, for messages.
fn describe_target(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let database = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres");
    format!("{host}:{port}/{database}")
}

/// Connects, migrates and starts listening (on the backend's runtime).
async fn start(
    config: tokio_postgres::Config,
    options: PostgresOptions,
    target: String,
) -> Result<Arc<Shared>> {
    let manager = Manager::from_config(
        config.clone(),
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(options.max_connections)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(60)))
        .create_timeout(Some(options.connect_timeout))
        .build()
        .map_err(|e| Error::Host(format!("cannot set up the PostgreSQL connections: {e}")))?;
    let (events, outgoing) = events::EventBus::new();
    let shared = Arc::new(Shared {
        pool,
        target,
        ready: Arc::new(Notify::new()),
        events,
    });
    schema::migrate(&shared).await?;
    if options.listen {
        tokio::spawn(listen::listen(config, shared.clone()));
    }
    tokio::spawn(events::publish(shared.clone(), outgoing));
    Ok(shared)
}

impl Shared {
    /// A pooled connection, or a clear error when the server is out of
    /// reach ([`Error::Unavailable`]).
    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(|e| {
            if let deadpool_postgres::PoolError::Backend(e) = &e
                && e.code() == Some(&tokio_postgres::error::SqlState::INVALID_CATALOG_NAME)
            {
                return Error::Store(format!(
                    "PostgreSQL at {} has no such database ({}): create it (`createdb`, or \
                     CREATE DATABASE), then start again; wpool creates its tables itself",
                    self.target,
                    describe(e)
                ));
            }
            let (cause, unavailable) = match &e {
                deadpool_postgres::PoolError::Backend(e) => (describe(e), is_unavailable(e)),
                deadpool_postgres::PoolError::Timeout(_) => {
                    ("timed out waiting for a connection".to_string(), true)
                }
                e => (e.to_string(), false),
            };
            let message = format!(
                "cannot reach PostgreSQL at {}: {cause}; check that the server runs and that \
                 the URL given (--store or WPOOL_STORE) names it",
                self.target
            );
            if unavailable {
                Error::Unavailable(message)
            } else {
                Error::Store(message)
            }
        })
    }
}

/// A driver error with its cause (the driver's own text is terse: "db
/// error").
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut text = format!("{} ({})", db.message(), db.code().code());
        if let Some(detail) = db.detail() {
            text.push_str(": ");
            text.push_str(detail);
        }
        return text;
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Whether a driver error says the server is out of reach rather than that
/// the statement failed: the connection could not be made, was closed or
/// broke, the server is shutting down, starting, or full, or it ended a
/// session that stalled in a transaction (SQLSTATE class `08`,
/// `57P01`–`57P03`, `53300`, `25P03`). Such a call may work
/// once the server is back; a failed statement would fail again.
fn is_unavailable(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    if let Some(code) = e.code() {
        return code.code().starts_with("08")
            || [
                SqlState::ADMIN_SHUTDOWN,
                SqlState::CRASH_SHUTDOWN,
                SqlState::CANNOT_CONNECT_NOW,
                SqlState::TOO_MANY_CONNECTIONS,
                SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
            ]
            .contains(code);
    }
    if e.is_closed() {
        return true;
    }
    // The driver's kinds are private: its text names them (I/O on the
    // connection, connecting, a connect timeout).
    let text = e.to_string();
    [
        "error communicating with the server",
        "error connecting to server",
        "timeout waiting for server",
    ]
    .iter()
    .any(|kind| text.starts_with(kind))
}

/// A driver error while doing `what`, as the crate's error:
/// [`Error::Unavailable`] when the server is out of reach
/// ([`is_unavailable`]), [`Error::Store`] otherwise.
fn db_error(what: &str, e: &tokio_postgres::Error) -> Error {
    let message = format!("PostgreSQL, {what}: {}", describe(e));
    if is_unavailable(e) {
        Error::Unavailable(message)
    } else {
        Error::Store(message)
    }
}

/// [`Millis`] as a `bigint`.
fn to_db(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A `bigint` as [`Millis`] (or a token).
fn from_db(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

#[async_trait::async_trait]
impl Backend for PostgresBackend {
    async fn put_module(&self, hash: &ModuleHash, bytes: &[u8]) -> Result<()> {
        let (hash, bytes) = (*hash, bytes.to_vec());
        self.call(move |s| async move { s.put_module(hash, bytes).await })
            .await
    }

    async fn module(&self, hash: &ModuleHash) -> Result<Option<Vec<u8>>> {
        let hash = *hash;
        self.call(move |s| async move { s.module(hash).await })
            .await
    }

    async fn modules(&self) -> Result<Vec<StoredModule>> {
        self.call(|s| async move { s.modules().await }).await
    }

    async fn delete_module(&self, hash: &ModuleHash) -> Result<bool> {
        let hash = *hash;
        self.call(move |s| async move { s.delete_module(hash).await })
            .await
    }

    async fn put_module_settings(
        &self,
        hash: &ModuleHash,
        settings: &ModuleSettings,
    ) -> Result<()> {
        let (hash, settings) = (*hash, settings.clone());
        self.call(move |s| async move { s.put_module_settings(hash, settings).await })
            .await
    }

    async fn module_settings(&self, hash: &ModuleHash) -> Result<Option<ModuleSettings>> {
        let hash = *hash;
        self.call(move |s| async move { s.module_settings(hash).await })
            .await
    }

    async fn enqueue(&self, tasks: Vec<TaskRecord>) -> Result<Vec<Enqueued>> {
        self.call(move |s| async move { s.enqueue(tasks).await })
            .await
    }

    async fn claim(&self, max: usize, ttl: Duration) -> Result<Claim> {
        self.call(move |s| async move { s.claim(max, 0, ttl).await })
            .await
    }

    async fn claim_ahead(&self, max: usize, ahead: usize, ttl: Duration) -> Result<Claim> {
        self.call(move |s| async move { s.claim(max, ahead, ttl).await })
            .await
    }

    async fn renew(&self, leases: &[Lease], ttl: Duration) -> Result<Vec<LeaseState>> {
        let leases = leases.to_vec();
        self.call(move |s| async move { s.renew(leases, ttl).await })
            .await
    }

    async fn complete(&self, lease: &Lease, run: Completion) -> Result<Completed> {
        let lease = *lease;
        self.call(move |s| async move { s.complete(lease, run).await })
            .await
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        let lease = *lease;
        self.call(move |s| async move { s.release(lease).await })
            .await
    }

    async fn expire_leases(&self) -> Result<Vec<TaskRecord>> {
        self.call(|s| async move { s.expire_leases().await }).await
    }

    async fn tick(&self) -> Result<Tick> {
        self.call(|s| async move { s.tick().await }).await
    }

    async fn cancel(&self, id: &TaskId) -> Result<Cancelled> {
        let id = *id;
        self.call(move |s| async move { s.cancel(id).await }).await
    }

    async fn get(&self, id: &TaskId) -> Result<Option<TaskRecord>> {
        let id = *id;
        self.call(move |s| async move { s.get(id).await }).await
    }

    async fn by_key(&self, key: &str) -> Result<Option<TaskId>> {
        let key = key.to_string();
        self.call(move |s| async move { s.by_key(key).await }).await
    }

    async fn list(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>> {
        let filter = filter.clone();
        self.call(move |s| async move { s.list(filter).await })
            .await
    }

    async fn counts(&self) -> Result<StateCounts> {
        self.call(|s| async move { s.counts().await }).await
    }

    async fn purge_finished(&self, before: Millis, keep: Option<u64>) -> Result<u64> {
        self.call(move |s| async move { s.purge_finished(before, keep).await })
            .await
    }

    async fn delete_finished(&self, ids: &[TaskId]) -> Result<Vec<TaskId>> {
        let ids = ids.to_vec();
        self.call(move |s| async move { s.delete_finished(&ids).await })
            .await
    }

    async fn gc_modules(&self) -> Result<u64> {
        self.call(|s| async move { s.gc_modules().await }).await
    }

    async fn flush(&self) -> Result<()> {
        // Every call commits before it returns.
        Ok(())
    }

    fn is_durable(&self) -> bool {
        true
    }

    async fn wait_for_work(&self) {
        self.shared.ready.notified().await;
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn publish(&self, event: &crate::Event) {
        self.shared.events.publish(event);
    }

    fn remote_events(&self) -> Option<tokio::sync::broadcast::Receiver<crate::Event>> {
        Some(self.shared.events.subscribe())
    }
}
