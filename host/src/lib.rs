//! wpool: a WebAssembly task-pool host.
//!
//! A task is a compiled WASM module plus input bytes (usually JSON). wpool
//! runs tasks on a fixed pool of wasmtime instances under fuel, epoch and
//! memory limits, so that a runaway task is really killed, and keeps queued
//! work and results in a [`Store`](store::Store).
//!
//! ```
//! use std::time::Duration;
//! use wpool::{Pool, PoolConfig, TaskSpec, TaskState};
//!
//! // A WASI command that writes "hi" to stdout.
//! let wasm = wat::parse_str(r#"
//!     (module
//!       (import "wasi_snapshot_preview1" "fd_write"
//!         (func $fd_write (param i32 i32 i32 i32) (result i32)))
//!       (memory (export "memory") 1)
//!       (data (i32.const 16) "hi")
//!       (func (export "_start")
//!         (i32.store (i32.const 0) (i32.const 16))
//!         (i32.store (i32.const 4) (i32.const 2))
//!         (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
//! "#)?;
//!
//! let pool = Pool::new(PoolConfig::new().workers(2).clone())?;
//! let runtime = tokio::runtime::Runtime::new()?;
//! let result = runtime.block_on(async {
//!     let module = pool.register(&wasm).await?;
//!     let task = pool
//!         .submit(TaskSpec::new(module, b"{}".to_vec()).timeout(Duration::from_secs(5)).max_attempts(3))
//!         .await?;
//!     task.wait().await
//! })?;
//! assert_eq!(result.state, TaskState::Succeeded);
//! assert_eq!(result.output, b"hi");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Core concepts
//!
//! - [`Pool`]: the public face. [`Pool::submit`] a [`TaskSpec`] (module,
//!   input, priority, limits, attempts and backoff, delay, expiry,
//!   idempotency key, labels) and get a [`TaskHandle`] that resolves to a
//!   [`TaskResult`]; [`Pool::cancel`], [`Pool::status`], [`Pool::list`],
//!   [`Pool::subscribe`] to [`Event`]s, [`Pool::stats`], and a graceful
//!   [`Pool::close`] (finish the queue) or [`Pool::stop`] (finish running
//!   work, keep the queue).
//! - [`backend::Backend`]: owns the queue. The pool claims ready tasks
//!   from it under leases, and records each run's end under its lease,
//!   durably, before anyone is told. [`backend::EmbeddedBackend`] keeps
//!   the queue of one process in a [`store::Store`]: in memory
//!   ([`store::MemoryStore`]) or on disk ([`store::SledStore`]). A task
//!   whose host dies while it runs runs again (an interruption, not an
//!   attempt).
//! - [`task`]: the task model: ids, states, specs, records, leases.
//! - [`Executor`]: one wasmtime engine (pooling allocator sized for the
//!   workers, fuel metering, epoch interruption), its compiled modules, and
//!   a fixed set of workers.
//! - [`CompiledModule`]: a module registered by its bytes, identified by
//!   [`ModuleHash`] (SHA-256), validated and compiled once.
//! - Two task ABIs, told apart by the bytes ([`ModuleKind`]): a WASI
//!   command (input on stdin, output on stdout, log on stderr, exit code) or
//!   a component of the `wpool:task` world (`run(input) -> result<output,
//!   error>`, host `log` and `progress`).
//! - [`Limits`]: timeout, fuel, memory, output and log size, with pool-wide
//!   defaults and per-task [`LimitOverrides`].
//! - [`RunReport`] and [`Outcome`]: what a run produced and how it ended.
//!
//! # Killing
//!
//! A guest spinning in wasm is stopped by epoch interruption within about a
//! tick (1 ms by default) of its deadline or cancel; a guest blocked in a
//! host call is stopped by dropping its async call. Either way the store is
//! dropped before the report is sent. Capabilities are deny-by-default: no
//! files, no sockets, nothing of the host's environment (a pooled task sees
//! two variables, `WPOOL_TASK_ID` and `WPOOL_ATTEMPT`, plus its module's).
//!
//! # Programs built for other hosts
//!
//! A WASI program built for any host runs as a task: [`ModuleSettings`]
//! (given at [`Pool::register_with`]) set its `argv[0]` and fixed
//! arguments, environment variables, the exit codes that mean success and
//! a bounded scratch directory; the operator grants read-only directories
//! ([`EngineConfig::read_only_dir`]). `wasm32-wasip2` binaries
//! (`wasi:cli/run` components) run like `wasm32-wasip1` commands.
//!
//! # Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `cli` | yes | the `wpool` binary (command line) |
//! | `postgres` | yes | [`backend::PostgresBackend`]: one queue in PostgreSQL, shared by many hosts |

mod abi;
pub mod backend;
mod cache;
mod cancel;
mod engine;
mod error;
mod executor;
mod limits;
mod outcome;
mod pool;
mod registry;
mod settings;
pub mod store;
pub mod task;
pub mod units;

pub use cache::{ARTIFACTS_DIR, ArtifactCache, CacheStats};
pub use engine::EngineConfig;
pub use error::{Error, Result};
pub use executor::{Execution, Executor, Job, ProgressFn};
pub use limits::{LimitOverrides, Limits, MAX_LOG, MAX_OUTPUT, MAX_TIMEOUT};
pub use outcome::{Outcome, RunReport};
pub use pool::events::{Event, EventKind, Events, EventsError};
pub use pool::{
    CancelResult, DEFAULT_CLAIM_AHEAD, DEFAULT_MAX_STORED_OUTPUT, MAX_CLAIM_AHEAD, Pool,
    PoolConfig, Stats, Submitted, TaskHandle,
};
pub use registry::{CompiledModule, ModuleKind};
pub use settings::{
    DEFAULT_PROGRAM_NAME, GrantTo, MAX_ARGS, MAX_ARGS_ENV_BYTES, MAX_ENV, MAX_NAME_LEN,
    MAX_SUCCESS_CODES, ModuleSettings, ReadOnlyDir,
};
pub use task::{
    Attempt, Backoff, MAX_ATTEMPTS, MAX_KEY_LEN, MAX_LABELS, Millis, ModuleHash, ModuleRef,
    StartAt, TaskId, TaskRecord, TaskResult, TaskSpec, TaskState, now_millis,
};
pub use task::{
    Completion, DEFAULT_MAX_INTERRUPTIONS, INLINE_PAYLOAD, Lease, Payload, Slot, TOO_LARGE_TAIL,
};
pub use tokio_util::sync::CancellationToken;

#[cfg(feature = "mimalloc")]
pub mod alloc;
#[cfg(feature = "cli")]
pub mod cli;
#[cfg(feature = "server")]
pub mod server;
