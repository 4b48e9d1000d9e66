//! The two task ABIs, and what they share: limits, kill switch, stdio and
//! the classification of how a run ended.
//!
//! # How a task is stopped
//!
//! - A guest **spinning in wasm** is stopped by epoch interruption: the
//!   engine's epoch advances every tick (1 ms by default); at each tick the
//!   store's callback compares the clock with the deadline and looks at the
//!   cancel token, and traps the guest with [`Killed`] when either says so.
//!   Between checks it yields to the async executor, so a spinning guest
//!   never monopolises a worker thread.
//! - A guest **blocked in a host call** (a WASI sleep, a poll on a clock)
//!   never reaches an epoch check. Its run is an async future (wasmtime's
//!   async support runs the guest on a fiber); the worker races that future
//!   against the deadline and the cancel token and, when either wins, drops
//!   it. Dropping the future unwinds the fiber and ends the guest for good.
//!
//! In both cases the store is dropped before the report is sent, so nothing
//! of the task is left running and its pool slot is free again.
//!
//! A command module that cannot block in a host call, whose runs are
//! short, is called directly instead of on a fiber
//! ([`command::CommandPre`]): only the epoch callback is needed to stop it
//! then, and it checks the same deadline and token.

pub(crate) mod command;
pub(crate) mod component;
pub(crate) mod environ;
pub(crate) mod io;
pub(crate) mod scratch;
pub(crate) mod stdio;

use std::time::{Duration, Instant};

use wasmtime::{Store, Trap, UpdateDeadline};

use crate::cancel::CancelFlag;
use crate::executor::SharedCancel;
use crate::{Limits, ModuleSettings, Outcome, ProgressFn};

/// Why the host stopped a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Killed {
    Timeout,
    Cancelled,
}

impl std::fmt::Display for Killed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Killed::Timeout => f.write_str("killed at its timeout"),
            Killed::Cancelled => f.write_str("cancelled"),
        }
    }
}

impl std::error::Error for Killed {}

/// A direct call that ran past [`DIRECT_TICKS`] epoch ticks: the epoch
/// callback ends it, and the run starts over on a fiber (see
/// [`command::CommandPre`]). Never an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Outgrown;

impl std::fmt::Display for Outgrown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the run outgrew its direct call")
    }
}

impl std::error::Error for Outgrown {}

thread_local! {
    /// Whether this thread is one of an executor's workers, whose stack
    /// holds a direct call's wasm stack: a run polled elsewhere (an
    /// embedder's own runtime calling [`crate::Executor::run`]) stays on a
    /// fiber.
    pub(crate) static WORKER_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// How many epoch ticks a direct call may run through before it is ended
/// and started over on a fiber: so it never holds its worker thread for
/// more than two ticks.
pub(crate) const DIRECT_TICKS: u32 = 2;

/// A guest's `proc_exit(code)`. wasmtime-wasi's own `proc_exit` refuses
/// codes of 126 and above (they are not portable exit statuses of a
/// process); a task's exit code is not a process status, so wpool links its
/// own `proc_exit`, which ends the guest with this error for every code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GuestExit(pub(crate) u32);

impl std::fmt::Display for GuestExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the guest exited with code {}", self.0)
    }
}

impl std::error::Error for GuestExit {}

/// The per-task memory limit. A `memory.grow` (or table growth) past the
/// limit fails the way wasm defines it (the instruction returns -1), so a
/// guest that can live with less memory goes on; `hit` records that the
/// limit was reached, so a guest that then fails is reported as
/// [`Outcome::MemoryLimit`].
#[derive(Debug)]
pub(crate) struct MemoryLimiter {
    limit: usize,
    used: usize,
    pub(crate) hit: bool,
}

/// The most table elements a task may have in one table.
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl MemoryLimiter {
    pub(crate) fn new(limit: u64) -> Self {
        Self {
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            used: 0,
            hit: false,
        }
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // The limit counts all of a task's memories together (a component
        // may have several).
        let after = self.used - current.min(self.used) + desired;
        if after > self.limit {
            self.hit = true;
            return Ok(false);
        }
        self.used = after;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }
}

/// What the worker needs to set up one run.
pub(crate) struct RunContext<'a> {
    pub(crate) limits: &'a Limits,
    /// Shared: the epoch callback keeps a handle.
    pub(crate) cancel: &'a SharedCancel,
    pub(crate) on_progress: Option<ProgressFn>,
    pub(crate) fuel_metering: bool,
    /// The guest's environment variables from wpool (`WPOOL_TASK_ID`,
    /// `WPOOL_ATTEMPT`), never the host's; the module's own come from
    /// `settings`.
    pub(crate) env: environ::RunEnv<'a>,
    /// The module's run settings.
    pub(crate) settings: &'a ModuleSettings,
    /// `settings` shared, if they are the module's own (not the
    /// defaults): what a command's store keeps of them.
    pub(crate) own_settings: Option<&'a std::sync::Arc<ModuleSettings>>,
    /// The host directories granted to this module, read-only: (host path,
    /// guest path).
    pub(crate) read_only_dirs: &'a [(std::path::PathBuf, String)],
    /// Where scratch directories are made; `None` when the engine gives
    /// none.
    pub(crate) scratch_root: Option<&'a std::path::Path>,
    /// The engine's epoch tick.
    pub(crate) epoch_tick: Duration,
    /// The executor's counts of direct calls, and of those started over
    /// on a fiber.
    pub(crate) direct_calls: &'a std::sync::atomic::AtomicU64,
    pub(crate) direct_restarts: &'a std::sync::atomic::AtomicU64,
}

impl RunContext<'_> {
    /// A WASI context builder with the guest's `argv` (the module's name,
    /// then its arguments: [`ModuleSettings::argv`], without building it)
    /// and environment (the module's variables, then wpool's), for a
    /// component (a command's are its store's: [`environ`]); stdio and
    /// directories are the caller's.
    pub(crate) fn wasi_builder(&self) -> wasmtime_wasi::WasiCtxBuilder {
        let mut builder = wasmtime_wasi::WasiCtxBuilder::new();
        builder
            .arg(self.settings.program_name())
            .args(&self.settings.args);
        for (key, value) in &self.settings.env {
            builder.env(key, value);
        }
        self.env.for_each(|key, value| {
            builder.env(key, value);
        });
        builder
    }

    /// Sets fuel, the epoch deadline and its callback on a new store. On a
    /// fiber (`on_fiber`), the callback yields to the runtime at every
    /// tick; in a direct call, which cannot yield, it ends the call at the
    /// [`DIRECT_TICKS`]th tick with [`Outgrown`].
    pub(crate) fn arm<T: 'static>(
        &self,
        store: &mut Store<T>,
        deadline: Instant,
        on_fiber: bool,
    ) -> wasmtime::Result<()> {
        if self.fuel_metering {
            store.set_fuel(self.limits.fuel.unwrap_or(u64::MAX))?;
        }
        let cancel = SharedCancel::clone(self.cancel);
        store.set_epoch_deadline(1);
        let mut ticks = 0;
        store.epoch_deadline_callback(move |_| {
            if cancel.is_cancelled() {
                return Err(wasmtime::Error::new(Killed::Cancelled));
            }
            if Instant::now() >= deadline {
                return Err(wasmtime::Error::new(Killed::Timeout));
            }
            if !on_fiber {
                ticks += 1;
                if ticks >= DIRECT_TICKS {
                    return Err(wasmtime::Error::new(Outgrown));
                }
                return Ok(UpdateDeadline::Continue(1));
            }
            Ok(UpdateDeadline::YieldCustom(
                1,
                Box::pin(tokio::task::yield_now()),
            ))
        });
        Ok(())
    }

    /// Fuel consumed by a finished run.
    pub(crate) fn fuel_consumed<T>(&self, store: &Store<T>) -> Option<u64> {
        if !self.fuel_metering {
            return None;
        }
        let budget = self.limits.fuel.unwrap_or(u64::MAX);
        store.get_fuel().ok().map(|left| budget - left.min(budget))
    }
}

/// The report of a run that ended with `outcome` and wrote `output`: its
/// fuel read, then its store dropped (a command's scratch directory goes
/// with it), then its log closed.
pub(crate) fn report<T>(
    store: Store<T>,
    outcome: Outcome,
    output: Vec<u8>,
    log: io::LogSink,
    cx: &RunContext<'_>,
    duration: Duration,
) -> crate::RunReport {
    let fuel_consumed = cx.fuel_consumed(&store);
    drop(store);
    let (log, progress) = log.finish();
    crate::RunReport {
        output,
        outcome,
        log,
        fuel_consumed,
        duration,
        progress,
    }
}

/// Runs `fut` until it finishes, the deadline passes or the task is
/// cancelled, whichever comes first; a future that loses is dropped, which
/// ends the guest (see the module docs).
///
/// The timer and the wait on the cancel token are set up only if `fut`
/// does not finish at its first poll: most short tasks never wait, and a
/// guest spinning in wasm is stopped by the epoch callback, which checks
/// the same deadline and token.
pub(crate) async fn race<F, T>(fut: F, deadline: Instant, cancel: &CancelFlag) -> Result<T, Killed>
where
    F: std::future::Future<Output = T>,
{
    if cancel.is_cancelled() {
        return Err(Killed::Cancelled);
    }
    let mut fut = std::pin::pin!(fut);
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(fut.as_mut().poll(cx))).await;
    if let std::task::Poll::Ready(out) = first {
        return Ok(out);
    }
    tokio::select! {
        biased;
        () = cancel.cancelled() => Err(Killed::Cancelled),
        out = &mut fut => Ok(out),
        () = tokio::time::sleep_until(deadline.into()) => Err(Killed::Timeout),
    }
}

/// The deadline of a run that started at `started` (clock reads cost
/// tens of nanoseconds on a virtual machine: a run reads the clock once
/// as it starts, and once as it ends).
pub(crate) fn deadline_after(started: Instant, timeout: Duration) -> Instant {
    started
        .checked_add(timeout)
        .unwrap_or_else(|| started + crate::limits::MAX_TIMEOUT)
}

/// Maps how a guest call ended to an [`Outcome`]. `memory_hit` and
/// `output_overflow` say whether a limit was reached during the run: they
/// explain a failure that followed. An exit with one of the module's
/// success codes is noted in `log`, and so is the wasm backtrace of a trap.
pub(crate) fn classify(
    result: Result<wasmtime::Result<()>, Killed>,
    memory_hit: bool,
    output_overflow: bool,
    settings: &ModuleSettings,
    log: &io::LogSink,
) -> Outcome {
    let error = match result {
        Err(Killed::Timeout) => return Outcome::Timeout,
        Err(Killed::Cancelled) => return Outcome::Cancelled,
        Ok(Ok(())) if output_overflow => return Outcome::OutputTooLarge,
        Ok(Ok(())) => return Outcome::Success,
        Ok(Err(error)) => error,
    };
    if let Some(code) = exit_code(&error) {
        if !settings.is_success_code(code) {
            return Outcome::Exit(code);
        }
        if code != 0 {
            log.line(&format!(
                "wpool: exited with code {code}, a success code of this module"
            ));
        }
        return if output_overflow {
            Outcome::OutputTooLarge
        } else {
            Outcome::Success
        };
    }
    if let Some(killed) = error.downcast_ref::<Killed>() {
        return match killed {
            Killed::Timeout => Outcome::Timeout,
            Killed::Cancelled => Outcome::Cancelled,
        };
    }
    if output_overflow || error.downcast_ref::<io::OutputLimitExceeded>().is_some() {
        return Outcome::OutputTooLarge;
    }
    if let Some(fault) = error.downcast_ref::<wiggle::GuestError>() {
        // WASI preview 1 traps on a pointer out of the guest's memory or
        // misaligned: the guest's fault, not the host's.
        note_backtrace(&error, log);
        return Outcome::Trap(format!("bad pointer passed to a WASI call: {fault}"));
    }
    if error.downcast_ref::<wasmtime::ThrownException>().is_some() {
        // A wasm exception nobody caught: the guest's own failure.
        note_backtrace(&error, log);
        return Outcome::Trap("uncaught wasm exception".into());
    }
    if let Some(trap) = error.downcast_ref::<Trap>() {
        return match trap {
            Trap::OutOfFuel => Outcome::OutOfFuel,
            Trap::Interrupt => Outcome::Timeout,
            _ if memory_hit => Outcome::MemoryLimit,
            Trap::StackOverflow => {
                note_backtrace(&error, log);
                Outcome::Trap("stack overflow".into())
            }
            other => {
                note_backtrace(&error, log);
                Outcome::Trap(other.to_string())
            }
        };
    }
    if memory_hit {
        return Outcome::MemoryLimit;
    }
    tracing::warn!(error = %error_chain(&error), "a task run failed in the host");
    Outcome::HostError(error_chain(&error))
}

/// The exit code a guest ended with, if it exited: by wpool's `proc_exit`
/// (any `u32`) or by WASI 0.2's `exit` (0 or 1).
fn exit_code(error: &wasmtime::Error) -> Option<u32> {
    if let Some(GuestExit(code)) = error.downcast_ref::<GuestExit>() {
        return Some(*code);
    }
    error
        .downcast_ref::<wasmtime_wasi::I32Exit>()
        .map(|exit| exit.0.cast_unsigned())
}

/// Appends the wasm backtrace of a failed run to the task's log (with
/// function names where the module has a name section).
fn note_backtrace(error: &wasmtime::Error, log: &io::LogSink) {
    if let Some(trace) = error.downcast_ref::<wasmtime::WasmBacktrace>() {
        // Its text starts with a line of wasmtime's ("error while executing
        // at wasm backtrace:"); the frames follow.
        let text = trace.to_string();
        let frames = text.split_once('\n').map_or("", |(_, frames)| frames);
        if !frames.trim().is_empty() {
            log.line(&format!("wpool: wasm backtrace:\n{}", frames.trim_end()));
        }
    }
}

/// The whole chain of a wasmtime error, outermost first.
pub(crate) fn error_chain(error: &wasmtime::Error) -> String {
    error
        .chain()
        .map(|cause| cause.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}
