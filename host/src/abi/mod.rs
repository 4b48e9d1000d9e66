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

pub(crate) mod command;
pub(crate) mod component;
pub(crate) mod io;

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use wasmtime::{Store, Trap, UpdateDeadline};

use crate::{Limits, Outcome, ProgressFn};

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
    pub(crate) cancel: &'a CancellationToken,
    pub(crate) on_progress: Option<ProgressFn>,
    pub(crate) fuel_metering: bool,
    /// The guest's environment variables: only what wpool sets
    /// (`WPOOL_TASK_ID`, `WPOOL_ATTEMPT`), never the host's.
    pub(crate) env: &'a [(String, String)],
}

impl RunContext<'_> {
    /// Sets fuel, the epoch deadline and its callback on a new store.
    pub(crate) fn arm<T: 'static>(
        &self,
        store: &mut Store<T>,
        deadline: Instant,
    ) -> wasmtime::Result<()> {
        if self.fuel_metering {
            store.set_fuel(self.limits.fuel.unwrap_or(u64::MAX))?;
        }
        let cancel = self.cancel.clone();
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if cancel.is_cancelled() {
                return Err(wasmtime::Error::new(Killed::Cancelled));
            }
            if Instant::now() >= deadline {
                return Err(wasmtime::Error::new(Killed::Timeout));
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

/// Runs `fut` until it finishes, the deadline passes or the task is
/// cancelled, whichever comes first; a future that loses is dropped, which
/// ends the guest (see the module docs).
pub(crate) async fn race<F, T>(
    fut: F,
    deadline: Instant,
    cancel: &CancellationToken,
) -> Result<T, Killed>
where
    F: std::future::Future<Output = T>,
{
    tokio::select! {
        biased;
        () = cancel.cancelled() => Err(Killed::Cancelled),
        out = fut => Ok(out),
        () = tokio::time::sleep_until(deadline.into()) => Err(Killed::Timeout),
    }
}

/// The deadline of a run that starts now.
pub(crate) fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + crate::limits::MAX_TIMEOUT)
}

/// Maps how a guest call ended to an [`Outcome`]. `memory_hit` and
/// `output_overflow` say whether a limit was reached during the run: they
/// explain a failure that followed.
pub(crate) fn classify(
    result: Result<wasmtime::Result<()>, Killed>,
    memory_hit: bool,
    output_overflow: bool,
) -> Outcome {
    let error = match result {
        Err(Killed::Timeout) => return Outcome::Timeout,
        Err(Killed::Cancelled) => return Outcome::Cancelled,
        Ok(Ok(())) if output_overflow => return Outcome::OutputTooLarge,
        Ok(Ok(())) => return Outcome::Success,
        Ok(Err(error)) => error,
    };
    if let Some(exit) = error.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return match exit.0 {
            0 if !output_overflow => Outcome::Success,
            0 => Outcome::OutputTooLarge,
            code => Outcome::Exit(code),
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
    if let Some(trap) = error.downcast_ref::<Trap>() {
        return match trap {
            Trap::OutOfFuel => Outcome::OutOfFuel,
            Trap::Interrupt => Outcome::Timeout,
            _ if memory_hit => Outcome::MemoryLimit,
            Trap::StackOverflow => Outcome::Trap("stack overflow".into()),
            other => Outcome::Trap(other.to_string()),
        };
    }
    if memory_hit {
        return Outcome::MemoryLimit;
    }
    Outcome::HostError(error_chain(&error))
}

/// The whole chain of a wasmtime error, outermost first.
pub(crate) fn error_chain(error: &wasmtime::Error) -> String {
    error
        .chain()
        .map(|cause| cause.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}
