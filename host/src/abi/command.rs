//! The WASI command ABI (wasm32-wasip1 core modules, any language).
//!
//! `_initialize` runs first if the module exports it (the WASI reactor
//! convention, which Rust `cdylib`s follow), then `_start`. The input is
//! stdin, the output stdout, stderr the log; exit code 0 (or returning from
//! `_start`) is success, and so is any of the module's success codes.
//!
//! `argv` is the module's name (or `task`) followed by its fixed arguments;
//! the environment is the module's variables plus `WPOOL_TASK_ID` and
//! `WPOOL_ATTEMPT`. Directories: those the operator granted to the module,
//! read-only, and the task's scratch directory at `/tmp` if the module
//! asked for one (with the input as `/tmp/input` if it asked for that).
//!
//! wpool links its own versions of a few WASI preview 1 calls, on top of
//! wasmtime-wasi's: `proc_exit` (any exit code, see
//! [`GuestExit`](super::GuestExit)), and the calls that make a directory
//! grow (the bound of the scratch directory, see [`super::scratch`]). They
//! call wasmtime-wasi's implementation for the work itself. The calls that
//! give `argv` and the environment are wpool's alone ([`environ`]): a run
//! builds neither unless its guest asks. So is `random_get`, and so are
//! reads of stdin and writes to stdout and stderr while the run's WASI
//! context is not built: a run without directories builds it only at the
//! first call wpool leaves to wasmtime-wasi ([`stdio`]).

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use wasmtime::{AsContextMut, Caller, Extern, InstancePre, Linker, Module, Store};
use wasmtime_wasi::FsPerms;
use wasmtime_wasi::p1::{WasiP1Ctx, wasi_snapshot_preview1 as p1};
use wasmtime_wasi::p2::pipe::MemoryInputPipe;

use super::environ::{self, GuestEnv};
use super::io::{CappedOutput, LogSink};
use super::scratch::{self, ENTRY_COST, ScratchDir, ScratchFull};
use super::stdio::{self, LazyWasi, Stdio};
use super::{GuestExit, MemoryLimiter, RunContext, classify, deadline_after, race};
use crate::{Error, Outcome, Result, RunReport};

/// The store data of a command module.
pub(crate) struct CommandState {
    /// Built at the first WASI call wpool does not answer itself
    /// ([`stdio`]).
    wasi: LazyWasi,
    limiter: MemoryLimiter,
    scratch: Option<ScratchDir>,
    /// Its `argv` and environment, for wpool's own calls that give them.
    env: GuestEnv,
}

const WASI: &str = "wasi_snapshot_preview1";

/// WASI preview 1 errno values wpool's own calls answer with.
const ERRNO_INVAL: i32 = 28;
const ERRNO_NOSPC: i32 = 51;
const ERRNO_NOTSUP: i32 = 58;

/// The most iovecs one write may pass (Linux's `IOV_MAX`).
const MAX_IOVS: u32 = 1024;

/// The linker of command modules: WASI preview 1, nothing else.
pub(crate) fn linker(engine: &wasmtime::Engine) -> Result<Linker<CommandState>> {
    let mut linker = Linker::new(engine);
    let link_error = |e: wasmtime::Error| Error::Host(format!("cannot link WASI preview 1: {e}"));
    wasmtime_wasi::p1::add_to_linker_async(&mut linker, |s: &mut CommandState| s.wasi.ctx())
        .map_err(link_error)?;
    linker.allow_shadowing(true);
    own_calls(&mut linker).map_err(link_error)?;
    environ::link(&mut linker, |s: &CommandState| &s.env).map_err(link_error)?;
    linker.allow_shadowing(false);
    Ok(linker)
}

/// The linker of command modules run by a direct call ([`CommandPre`]):
/// WASI preview 1 as synchronous host functions, and wpool's `proc_exit`.
///
/// wasmtime-wasi's own synchronous bindings block on a tokio runtime at
/// every call that its implementation makes async, which panics on the
/// executor's worker threads; so each of those calls is linked here over
/// the async implementation, driven to its end on the calling thread
/// ([`finish`]). A direct call never has a preopened directory and never
/// imports `poll_oneoff`, so those calls touch only the task's memory
/// pipes, and are ready at their first poll.
pub(crate) fn direct_linker(engine: &wasmtime::Engine) -> Result<Linker<CommandState>> {
    let mut linker = Linker::new(engine);
    let link_error = |e: wasmtime::Error| Error::Host(format!("cannot link WASI preview 1: {e}"));
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |s: &mut CommandState| s.wasi.ctx())
        .map_err(link_error)?;
    linker.allow_shadowing(true);
    sync_wasi_calls(&mut linker).map_err(link_error)?;
    environ::link(&mut linker, |s: &CommandState| &s.env).map_err(link_error)?;
    linker.allow_shadowing(false);
    Ok(linker)
}

/// Drives a host call's future to its end on the calling thread: at once
/// if it is ready at its first poll (the memory pipes always are), else by
/// parking the thread until it is woken (a file operation on tokio's
/// blocking pool; a direct call has no files, so this is a safety net).
fn finish<F: std::future::Future>(future: F) -> F::Output {
    use std::task::{Context, Poll, Wake, Waker};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    // Outside tokio's cooperative budget: a future that found the worker
    // task's budget spent would answer "pending" until the task yields,
    // which a direct call cannot do.
    let mut future = std::pin::pin!(tokio::task::unconstrained(future));
    if let Poll::Ready(out) = future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        return out;
    }
    let waker = Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}

/// Evaluates `$body` with the caller's WASI context (built now if it was
/// not: [`stdio`]) and memory, as wasmtime-wasi's own linker entries
/// call its implementation: the call's host-call fuel given to the
/// context first.
macro_rules! with_wasi {
    ($caller:ident, |$wasi:ident, $memory:ident| $body:expr) => {{
        let fuel = $caller.as_context_mut().hostcall_fuel();
        let Some(Extern::Memory(memory)) = $caller.get_export("memory") else {
            return Err(wasmtime::Error::msg("missing required memory export"));
        };
        let (bytes, state) = memory.data_and_store_mut(&mut $caller);
        let mut guest = wiggle::GuestMemory::Unshared(bytes);
        let $memory = &mut guest;
        use p1::WasiSnapshotPreview1 as _;
        let $wasi = state.wasi.ctx();
        $wasi.set_hostcall_fuel(fuel);
        $body
    }};
}

/// Where a command's store keeps its WASI context, for [`stdio`]'s calls.
fn wasi_of(state: &mut CommandState) -> &mut LazyWasi {
    &mut state.wasi
}

/// Links, as synchronous host functions, the WASI preview 1 calls whose
/// wasmtime-wasi implementation is async (all but `poll_oneoff`, which
/// keeps a module off the direct call), and wpool's `proc_exit` and
/// `random_get`. wpool answers reads of stdin and writes to stdout and
/// stderr itself while the context is not built ([`stdio`]).
fn sync_wasi_calls(linker: &mut Linker<CommandState>) -> wasmtime::Result<()> {
    macro_rules! direct {
        ($($name:ident($($arg:ident: $ty:ty),*);)*) => {$(
            linker.func_wrap(
                WASI,
                stringify!($name),
                |mut caller: Caller<'_, CommandState>, $($arg: $ty),*| -> wasmtime::Result<i32> {
                    with_wasi!(caller, |wasi, memory| finish(p1::$name(wasi, memory, $($arg),*)))
                },
            )?;
        )*};
    }
    // Reads of stdin and writes to stdout and stderr: wpool's own while
    // the context is not built.
    macro_rules! stdio_first {
        ($($name:ident: $own:path;)*) => {$(
            linker.func_wrap(
                WASI,
                stringify!($name),
                |mut caller: Caller<'_, CommandState>, fd: i32, iovs: i32, count: i32, done: i32|
                 -> wasmtime::Result<i32> {
                    if let Some(answer) = $own(&mut caller, wasi_of, fd, iovs, count, done) {
                        return answer;
                    }
                    with_wasi!(caller, |wasi, memory| {
                        finish(p1::$name(wasi, memory, fd, iovs, count, done))
                    })
                },
            )?;
        )*};
    }
    direct! {
        fd_advise(fd: i32, offset: i64, len: i64, advice: i32);
        fd_close(fd: i32);
        fd_datasync(fd: i32);
        fd_fdstat_get(fd: i32, buf: i32);
        fd_filestat_get(fd: i32, buf: i32);
        fd_filestat_set_size(fd: i32, size: i64);
        fd_filestat_set_times(fd: i32, atim: i64, mtim: i64, flags: i32);
        fd_pread(fd: i32, iovs: i32, count: i32, offset: i64, read: i32);
        fd_seek(fd: i32, offset: i64, whence: i32, at: i32);
        fd_sync(fd: i32);
        fd_readdir(fd: i32, buf: i32, len: i32, cookie: i64, used: i32);
        fd_pwrite(fd: i32, iovs: i32, count: i32, offset: i64, written: i32);
        path_create_directory(fd: i32, path: i32, path_len: i32);
        path_filestat_get(fd: i32, flags: i32, path: i32, path_len: i32, buf: i32);
        path_filestat_set_times(
            fd: i32, flags: i32, path: i32, path_len: i32, atim: i64, mtim: i64, fst: i32
        );
        path_link(
            old_fd: i32, flags: i32, old: i32, old_len: i32, new_fd: i32, new: i32, new_len: i32
        );
        path_open(
            fd: i32, dirflags: i32, path: i32, path_len: i32, oflags: i32, base: i64,
            inheriting: i64, fdflags: i32, opened: i32
        );
        path_readlink(fd: i32, path: i32, path_len: i32, buf: i32, buf_len: i32, used: i32);
        path_remove_directory(fd: i32, path: i32, path_len: i32);
        path_rename(fd: i32, old: i32, old_len: i32, new_fd: i32, new: i32, new_len: i32);
        path_symlink(old: i32, old_len: i32, fd: i32, new: i32, new_len: i32);
        path_unlink_file(fd: i32, path: i32, path_len: i32);
        fd_renumber(fd: i32, to: i32);
    }
    stdio_first! {
        fd_read: stdio::read;
        fd_write: stdio::write;
    }
    proc_exit(linker)?;
    random_get(linker)
}

/// Links wpool's `proc_exit` (see [`GuestExit`]).
fn proc_exit(linker: &mut Linker<CommandState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        WASI,
        "proc_exit",
        |_: Caller<'_, CommandState>, code: i32| -> wasmtime::Result<()> {
            Err(wasmtime::Error::new(GuestExit(code.cast_unsigned())))
        },
    )?;
    Ok(())
}

/// Links wpool's `random_get` ([`stdio::random`]).
fn random_get(linker: &mut Linker<CommandState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        WASI,
        "random_get",
        |mut caller: Caller<'_, CommandState>, buf: i32, len: i32| {
            stdio::random(&mut caller, buf, len)
        },
    )?;
    Ok(())
}

/// Calls wasmtime-wasi's implementation of a WASI preview 1 function with
/// the caller's memory, as its own linker entry would, and awaits it.
macro_rules! delegate {
    ($caller:ident, $func:ident($($arg:expr),*)) => {
        with_wasi!($caller, |wasi, memory| p1::$func(wasi, memory, $($arg),*).await)
    };
}

/// Whether the caller's scratch directory (if it has one) can take `more`
/// bytes.
fn scratch_fits(caller: &Caller<'_, CommandState>, more: u64) -> bool {
    caller.data().scratch.as_ref().is_none_or(|s| s.fits(more))
}

/// After a write: stops the task if its scratch directory passed its bound.
fn scratch_after_write(caller: &Caller<'_, CommandState>) -> wasmtime::Result<()> {
    match &caller.data().scratch {
        Some(s) if !s.fits(0) => Err(wasmtime::Error::new(ScratchFull { bound: s.bound() })),
        _ => Ok(()),
    }
}

/// The total length of the iovecs of a write, `None` if they are not all in
/// the guest's memory (wasmtime-wasi then traps the guest).
fn iovecs_len(caller: &mut Caller<'_, CommandState>, iovs: i32, count: i32) -> Option<u64> {
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
        return None;
    };
    let data = memory.data(&caller);
    let start = usize::try_from(iovs.cast_unsigned()).ok()?;
    let count = usize::try_from(count.cast_unsigned()).ok()?;
    let table = data.get(start..start.checked_add(count.checked_mul(8)?)?)?;
    Some(
        table
            .chunks_exact(8)
            .map(|iov| u64::from(u32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]])))
            .sum(),
    )
}

/// wpool's own WASI preview 1 calls (see the module docs).
fn own_calls(linker: &mut Linker<CommandState>) -> wasmtime::Result<()> {
    proc_exit(linker)?;
    random_get(linker)?;
    linker.func_wrap_async(
        WASI,
        "fd_read",
        |mut caller: Caller<'_, CommandState>, (fd, iovs, count, read): (i32, i32, i32, i32)| {
            Box::new(async move {
                if let Some(answer) = stdio::read(&mut caller, wasi_of, fd, iovs, count, read) {
                    return answer;
                }
                delegate!(caller, fd_read(fd, iovs, count, read))
            })
        },
    )?;
    linker.func_wrap_async(
        WASI,
        "fd_write",
        |mut caller: Caller<'_, CommandState>, (fd, iovs, count, written): (i32, i32, i32, i32)| {
            Box::new(async move {
                if let Some(answer) = stdio::write(&mut caller, wasi_of, fd, iovs, count, written) {
                    return answer;
                }
                if fd > 2 && caller.data().scratch.is_some() {
                    if count.cast_unsigned() > MAX_IOVS {
                        return Ok(ERRNO_INVAL);
                    }
                    if let Some(len) = iovecs_len(&mut caller, iovs, count)
                        && !scratch_fits(&caller, len)
                    {
                        return Ok(ERRNO_NOSPC);
                    }
                }
                let errno = delegate!(caller, fd_write(fd, iovs, count, written))?;
                if fd > 2 {
                    scratch_after_write(&caller)?;
                }
                Ok(errno)
            })
        },
    )?;
    linker.func_wrap_async(
        WASI,
        "fd_pwrite",
        |mut caller: Caller<'_, CommandState>,
         (fd, iovs, count, offset, written): (i32, i32, i32, i64, i32)| {
            Box::new(async move {
                if caller.data().scratch.is_some() {
                    if count.cast_unsigned() > MAX_IOVS {
                        return Ok(ERRNO_INVAL);
                    }
                    if let Some(len) = iovecs_len(&mut caller, iovs, count)
                        && !scratch_fits(&caller, len)
                    {
                        return Ok(ERRNO_NOSPC);
                    }
                }
                let errno = delegate!(caller, fd_pwrite(fd, iovs, count, offset, written))?;
                scratch_after_write(&caller)?;
                Ok(errno)
            })
        },
    )?;
    linker.func_wrap_async(
        WASI,
        "fd_filestat_set_size",
        |mut caller: Caller<'_, CommandState>, (fd, size): (i32, i64)| {
            Box::new(async move {
                if !scratch_fits(&caller, size.cast_unsigned()) {
                    return Ok(ERRNO_NOSPC);
                }
                delegate!(caller, fd_filestat_set_size(fd, size))
            })
        },
    )?;
    linker.func_wrap_async(
        WASI,
        "path_open",
        |mut caller: Caller<'_, CommandState>,
         (fd, dirflags, path, path_len, oflags, base, inheriting, fdflags, opened): (
            i32,
            i32,
            i32,
            i32,
            i32,
            i64,
            i64,
            i32,
            i32,
        )| {
            Box::new(async move {
                const O_CREAT: i32 = 1;
                if oflags & O_CREAT != 0 && !scratch_fits(&caller, ENTRY_COST) {
                    return Ok(ERRNO_NOSPC);
                }
                delegate!(
                    caller,
                    path_open(
                        fd, dirflags, path, path_len, oflags, base, inheriting, fdflags, opened
                    )
                )
            })
        },
    )?;
    linker.func_wrap_async(
        WASI,
        "path_create_directory",
        |mut caller: Caller<'_, CommandState>, (fd, path, path_len): (i32, i32, i32)| {
            Box::new(async move {
                if !scratch_fits(&caller, ENTRY_COST) {
                    return Ok(ERRNO_NOSPC);
                }
                delegate!(caller, path_create_directory(fd, path, path_len))
            })
        },
    )?;
    linker.func_wrap_async(
        WASI,
        "path_symlink",
        |mut caller: Caller<'_, CommandState>,
         (old, old_len, fd, new, new_len): (i32, i32, i32, i32, i32)| {
            Box::new(async move {
                let more = ENTRY_COST + u64::from(old_len.cast_unsigned());
                if !scratch_fits(&caller, more) {
                    return Ok(ERRNO_NOSPC);
                }
                delegate!(caller, path_symlink(old, old_len, fd, new, new_len))
            })
        },
    )?;
    linker.func_wrap_async(
        WASI,
        "path_link",
        |mut caller: Caller<'_, CommandState>,
         (old_fd, flags, old, old_len, new_fd, new, new_len): (
            i32,
            i32,
            i32,
            i32,
            i32,
            i32,
            i32,
        )| {
            Box::new(async move {
                if !scratch_fits(&caller, ENTRY_COST) {
                    return Ok(ERRNO_NOSPC);
                }
                delegate!(
                    caller,
                    path_link(old_fd, flags, old, old_len, new_fd, new, new_len)
                )
            })
        },
    )?;
    linker.func_wrap_async(
        WASI,
        "fd_renumber",
        |mut caller: Caller<'_, CommandState>, (fd, to): (i32, i32)| {
            Box::new(async move {
                // Writes to stdout and stderr are not counted against the
                // scratch bound: a file must not take their place.
                if caller.data().scratch.is_some() && (0..=2).contains(&to) {
                    return Ok(ERRNO_NOTSUP);
                }
                delegate!(caller, fd_renumber(fd, to))
            })
        },
    )?;
    Ok(())
}

/// How to build a command module for wpool, for refusals.
const BUILD_HINT: &str = "build a binary for `wasm32-wasip1` (Rust: `cargo build --target \
                          wasm32-wasip1`; C: clang with wasi-libc, `--target=wasm32-wasip1`)";

/// Checks a compiled core module and prepares it for quick instantiation.
pub(crate) fn prepare(
    linker: &Linker<CommandState>,
    direct_linker: &Linker<CommandState>,
    module: &Module,
) -> Result<CommandPre> {
    for import in module.imports() {
        match (import.module(), import.name(), import.ty()) {
            ("wasi_unstable", _, _) => {
                return Err(Error::InvalidModule(format!(
                    "the module imports `wasi_unstable::{}`: it was built for WASI snapshot 0, \
                     which wpool does not run; rebuild it with a current toolchain, {BUILD_HINT}",
                    import.name()
                )));
            }
            ("wasi", "thread-spawn", _) => {
                return Err(Error::InvalidModule(format!(
                    "the module imports `wasi::thread-spawn`: it was built for WASI threads \
                     (wasm32-wasip1-threads), and wpool runs single-threaded tasks only; \
                     {BUILD_HINT}, without threads"
                )));
            }
            (_, _, wasmtime::ExternType::Memory(ty)) if ty.is_shared() => {
                return Err(Error::InvalidModule(format!(
                    "the module imports a shared memory (WebAssembly threads), and wpool runs \
                     single-threaded tasks only; {BUILD_HINT}, without threads or atomics"
                )));
            }
            (WASI, _, _) => {}
            (other, name, _) => {
                return Err(Error::InvalidModule(format!(
                    "the module imports `{other}::{name}`, which wpool does not provide: a \
                     command module may import only WASI preview 1 (`wasi_snapshot_preview1`)"
                )));
            }
        }
    }
    match module.get_export("_start") {
        Some(wasmtime::ExternType::Func(ty))
            if ty.params().len() == 0 && ty.results().len() == 0 => {}
        Some(_) => {
            return Err(Error::InvalidModule(
                "`_start` is exported but is not a function of no arguments and no results".into(),
            ));
        }
        None => {
            return Err(Error::InvalidModule(format!(
                "the core module does not export `_start`: a task module must be a WASI command \
                 ({BUILD_HINT}; or export `_start`), or a component of the `wpool:task` world \
                 or a `wasi:cli/run` command"
            )));
        }
    }
    match module.get_export("memory") {
        Some(wasmtime::ExternType::Memory(_)) => {}
        _ => {
            return Err(Error::InvalidModule(format!(
                "the module does not export its memory as `memory`, which every WASI command \
                 must (WASI calls read and write the guest's memory through it); {BUILD_HINT}, \
                 or add `(export \"memory\" (memory 0))`"
            )));
        }
    }
    let on_fiber = linker.instantiate_pre(module).map_err(|e| {
        Error::InvalidModule(format!(
            "the module's imports do not match WASI preview 1: {}",
            super::error_chain(&e)
        ))
    })?;
    let can_wait = module
        .imports()
        .any(|import| import.module() == WASI && import.name() == "poll_oneoff");
    let direct = if can_wait {
        None
    } else {
        // The same imports as above, synchronous: this cannot fail where
        // the async linker succeeded; if it did, the fiber still works.
        direct_linker.instantiate_pre(module).ok()
    };
    let start = module
        .get_export_index("_start")
        .expect("`_start` was checked above");
    let initialize = match module.get_export("_initialize") {
        Some(wasmtime::ExternType::Func(ty))
            if ty.params().len() == 0 && ty.results().len() == 0 =>
        {
            module.get_export_index("_initialize")
        }
        _ => None,
    };
    Ok(CommandPre {
        on_fiber,
        direct,
        short_runs: AtomicU32::new(0),
        start,
        initialize,
    })
}

/// A command module prepared to run in either of two ways.
///
/// - **On a fiber** (`call_async`): the guest runs on a stack of its own,
///   and yields to the worker's runtime at every epoch tick; a guest
///   blocked in a host call (a WASI sleep) is ended by dropping its future.
///   Every module can run so.
/// - **By a direct call** (`call`), without the fiber and its switches
///   (about 2,700 instructions, 7% of a trivial task's run). Only a
///   run that cannot wait in a host call is made so: the module imports no
///   `poll_oneoff` (the only WASI preview 1 call that waits for time), and
///   the run has no preopened directory (no file to block on), so every
///   host call returns at once. A guest spinning in wasm is stopped by the
///   same epoch callback as on a fiber, which traps it at its deadline or
///   cancel; but it cannot yield, so it holds its worker thread (and any
///   task the runtime queued behind it there). So only a module whose
///   recent runs all ended within one epoch tick (as long as a run on a
///   fiber holds the thread between two yields) runs directly:
///   [`DIRECT_AFTER`] such runs in a row, and any longer run sends it back
///   to the fiber. A direct call still running at the second tick is
///   ended there and the run starts over on a fiber, under the same
///   deadline, with a new store (the output, log and fuel of the direct
///   call are dropped; progress it reported was already sent): a direct
///   call never holds its thread for more than two ticks. A task runs at
///   least once in any case (a crash runs it again), so starting it over
///   is within what a task must bear.
pub(crate) struct CommandPre {
    on_fiber: InstancePre<CommandState>,
    direct: Option<InstancePre<CommandState>>,
    /// The module's runs in a row that ended within one epoch tick.
    short_runs: AtomicU32,
    /// `_start`, found once: a look-up by name hashes the name at every
    /// run.
    start: wasmtime::ModuleExport,
    /// `_initialize` (the WASI reactor convention), if the module exports
    /// it as a function of no arguments and no results; otherwise it is
    /// not called, as before.
    initialize: Option<wasmtime::ModuleExport>,
}

/// How many runs in a row of a module must end within one epoch tick
/// before its runs are direct calls ([`CommandPre`]).
const DIRECT_AFTER: u32 = 8;

impl CommandPre {
    /// The prepared module for a direct call of this run, if it may be one.
    fn direct(&self, cx: &RunContext<'_>) -> Option<&InstancePre<CommandState>> {
        if has_files(cx)
            || self.short_runs.load(Ordering::Relaxed) < DIRECT_AFTER
            || !super::WORKER_THREAD.get()
        {
            return None;
        }
        self.direct.as_ref()
    }

    /// Counts a run that took `took`, against the epoch tick.
    fn ran(&self, took: std::time::Duration, tick: std::time::Duration) {
        if took < tick {
            if self.short_runs.load(Ordering::Relaxed) < DIRECT_AFTER {
                self.short_runs.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            self.short_runs.store(0, Ordering::Relaxed);
        }
    }
}

/// Whether a run has directories: those granted to its module, or a
/// scratch directory.
fn has_files(cx: &RunContext<'_>) -> bool {
    !cx.read_only_dirs.is_empty() || (cx.settings.scratch.is_some() && cx.scratch_root.is_some())
}

/// Runs one task on a prepared command module.
pub(crate) async fn run(
    engine: &wasmtime::Engine,
    pre: &CommandPre,
    input: Vec<u8>,
    cx: &RunContext<'_>,
) -> RunReport {
    let started = Instant::now();
    let deadline = deadline_after(started, cx.limits.timeout);
    let input = bytes::Bytes::from(input);
    if let Some(direct) = pre.direct(cx) {
        cx.direct_calls.fetch_add(1, Ordering::Relaxed);
        let mut run = match Run::new(engine, input.clone(), cx, deadline, false) {
            Ok(run) => run,
            Err(report) => return *report,
        };
        // Killed by the epoch callback only, which is enough: no host call
        // of a direct run waits (see `CommandPre`).
        let result = (|| {
            let instance = direct.instantiate(&mut run.store)?;
            if let Some(init) = &pre.initialize {
                entry(&mut run.store, &instance, init)?.call(&mut run.store, ())?;
            }
            entry(&mut run.store, &instance, &pre.start)?.call(&mut run.store, ())
        })();
        let took = started.elapsed();
        pre.ran(took, cx.epoch_tick);
        match result {
            Err(e) if e.is::<super::Outgrown>() => {
                // Started over on a fiber, under the same deadline: what
                // the direct call did is dropped with its store.
                cx.direct_restarts.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("a run outgrew its direct call; it starts over on a fiber");
            }
            result => return run.report(Ok(result), cx, took),
        }
    }
    let mut run = match Run::new(engine, input, cx, deadline, true) {
        Ok(run) => run,
        Err(report) => return *report,
    };
    let store = &mut run.store;
    let result = race(
        async {
            let instance = pre.on_fiber.instantiate_async(&mut *store).await?;
            if let Some(init) = &pre.initialize {
                entry(store, &instance, init)?
                    .call_async(&mut *store, ())
                    .await?;
            }
            entry(store, &instance, &pre.start)?
                .call_async(&mut *store, ())
                .await
        },
        deadline,
        cx.cancel,
    )
    .await;
    let took = started.elapsed();
    pre.ran(took, cx.epoch_tick);
    run.report(result, cx, took)
}

/// One run's store, with its output and log.
struct Run {
    store: Store<CommandState>,
    output: CappedOutput,
    log: LogSink,
}

impl Run {
    /// A new store for a run of `input` until `deadline`, on a fiber
    /// (`on_fiber`) or by a direct call; the report of the run that could
    /// not start otherwise.
    fn new(
        engine: &wasmtime::Engine,
        input: bytes::Bytes,
        cx: &RunContext<'_>,
        deadline: Instant,
        on_fiber: bool,
    ) -> Result<Self, Box<RunReport>> {
        let output = CappedOutput::new(usize::try_from(cx.limits.max_output).unwrap_or(usize::MAX));
        let log = LogSink::new(
            usize::try_from(cx.limits.max_log).unwrap_or(usize::MAX),
            cx.on_progress.clone(),
        );
        let (wasi, scratch) = if has_files(cx) {
            let (ctx, scratch) = wasi_ctx(cx, input, &output, &log)
                .map_err(|e| Box::new(RunReport::without_run(Outcome::HostError(e))))?;
            (LazyWasi::Built(ctx), scratch)
        } else {
            let stdio = Stdio {
                input,
                read: 0,
                output: output.clone(),
                log: log.clone(),
            };
            (LazyWasi::Pending(stdio), None)
        };
        // The scratch directory is `TMPDIR`, unless the module sets it.
        let tmpdir = (scratch.is_some() && !cx.settings.env.contains_key("TMPDIR"))
            .then_some(scratch::GUEST_PATH);
        let mut store = Store::new(
            engine,
            CommandState {
                wasi,
                limiter: MemoryLimiter::new(cx.limits.memory),
                scratch,
                env: GuestEnv::new(cx.own_settings, cx.env, tmpdir),
            },
        );
        store.limiter(|s| &mut s.limiter);
        cx.arm(&mut store, deadline, on_fiber)
            .map_err(|e| RunReport::without_run(Outcome::HostError(super::error_chain(&e))))?;
        Ok(Run { store, output, log })
    }

    /// The report of the run that ended with `result`.
    fn report(
        self,
        result: Result<wasmtime::Result<()>, super::Killed>,
        cx: &RunContext<'_>,
        took: std::time::Duration,
    ) -> RunReport {
        let Run { store, output, log } = self;
        let outcome = match result {
            Ok(Err(e)) if e.downcast_ref::<ScratchFull>().is_some() => Outcome::Trap(
                e.downcast_ref::<ScratchFull>()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
            ),
            result => classify(
                result,
                store.data().limiter.hit,
                output.overflowed(),
                cx.settings,
                &log,
            ),
        };
        super::report(store, outcome, output.take(), log, cx, took)
    }
}

/// The entry point `export` (`_start` or `_initialize`, of no arguments
/// and no results: checked when the module was prepared) of `instance`.
fn entry(
    store: &mut Store<CommandState>,
    instance: &wasmtime::Instance,
    export: &wasmtime::ModuleExport,
) -> wasmtime::Result<wasmtime::TypedFunc<(), ()>> {
    instance
        .get_module_export(&mut *store, export)
        .and_then(wasmtime::Extern::into_func)
        .ok_or_else(|| wasmtime::format_err!("the module's entry point is not a function"))?
        .typed::<(), ()>(&*store)
}

/// The WASI context of a task with directories ([`has_files`]): deny by
/// default (no host environment, no network); the directories the
/// operator granted it (read-only), and its scratch directory. Its
/// arguments and environment are not in it: wpool's own calls give them
/// ([`environ`]).
fn wasi_ctx(
    cx: &RunContext<'_>,
    input: bytes::Bytes,
    output: &CappedOutput,
    log: &LogSink,
) -> Result<(WasiP1Ctx, Option<ScratchDir>), String> {
    let mut builder = wasmtime_wasi::WasiCtxBuilder::new();
    builder.stdout(output.clone()).stderr(log.clone());
    for (host, guest) in cx.read_only_dirs {
        builder
            .preopened_dir(host, guest, FsPerms::ReadOnly)
            .map_err(|e| {
                format!(
                    "cannot open the granted directory {} for the task: {e}",
                    host.display()
                )
            })?;
    }
    let scratch = match (cx.settings.scratch, cx.scratch_root) {
        (Some(bound), Some(root)) => {
            let dir = ScratchDir::create(root, bound).map_err(|e| {
                format!(
                    "cannot create a scratch directory under {}: {e}",
                    root.display()
                )
            })?;
            builder
                .preopened_dir(dir.path(), scratch::GUEST_PATH, FsPerms::ReadWrite)
                .map_err(|e| format!("cannot open the scratch directory: {e}"))?;
            if cx.settings.input_file {
                std::fs::write(dir.path().join(scratch::INPUT_FILE), &input).map_err(|e| {
                    format!("cannot write the input into the scratch directory: {e}")
                })?;
            }
            Some(dir)
        }
        _ => None,
    };
    // Last, so that the pipe takes the input rather than a clone of it.
    builder.stdin(MemoryInputPipe::new(input));
    Ok((builder.build_p1(), scratch))
}
