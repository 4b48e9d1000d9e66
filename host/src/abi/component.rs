//! The component ABIs: components of the `wpool:task` world
//! (`wit/task.wit`), and `wasi:cli/run` commands (what `cargo build --target
//! wasm32-wasip2` makes of a binary), which run like WASI preview 1
//! commands: input on stdin, output from stdout, stderr the log, the exit
//! code as the outcome (`wasi:cli/exit` gives 0 or 1).
//!
//! The host's bindings are generated from `wit/task.wit`. WASI 0.2 is
//! linked for clocks, random, stdio and io, deny-by-default; both kinds see
//! their module's arguments and environment and the directories the
//! operator granted them (no scratch directory: its bound is kept by
//! wpool's WASI preview 1 calls).

use std::time::Instant;

use wasmtime::Store;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};

use super::io::{CappedOutput, LogSink};
use super::{GuestExit, MemoryLimiter, RunContext, classify, deadline_after, race};
use crate::{Error, Outcome, Result, RunReport};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "wpool:task/task",
        exports: { default: async },
    });
}

pub(crate) use bindings::TaskPre;

/// The store data of a component task.
pub(crate) struct ComponentState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    log: LogSink,
}

impl WasiView for ComponentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl bindings::wpool::task::host::Host for ComponentState {
    fn log(&mut self, line: String) {
        self.log.line(&line);
    }

    fn progress(&mut self, done: u64, total: u64) {
        self.log.progress(done, total);
    }
}

/// The linker of components: WASI 0.2 and the `wpool:task/host` imports.
pub(crate) fn linker(engine: &wasmtime::Engine) -> Result<Linker<ComponentState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
        .map_err(|e| Error::Host(format!("cannot link WASI 0.2: {e}")))?;
    bindings::wpool::task::host::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
        .map_err(|e| Error::Host(format!("cannot link the wpool:task host: {e}")))?;
    Ok(linker)
}

/// A component ready to instantiate, by the world it implements.
pub(crate) enum ComponentPre {
    /// The `wpool:task/task` world.
    Task(TaskPre<ComponentState>),
    /// A `wasi:cli/run` command.
    Cli(CommandPre<ComponentState>),
}

/// What a component must be, for refusals.
const ACCEPTED: &str = "wpool runs components of the `wpool:task/task` world (export `run: \
                        func(input: list<u8>) -> result<list<u8>, string>`, see wit/task.wit) \
                        and WASI 0.2 commands exporting `wasi:cli/run@0.2.x` (`cargo build \
                        --target wasm32-wasip2` of a binary)";

/// Checks a compiled component and prepares it for quick instantiation.
pub(crate) fn prepare(
    linker: &Linker<ComponentState>,
    component: &Component,
) -> Result<ComponentPre> {
    let ty = component.component_type();
    let engine = component.engine();
    let names: Vec<String> = ty
        .imports(engine)
        .map(|(name, _)| name.to_string())
        .chain(ty.exports(engine).map(|(name, _)| name.to_string()))
        .collect();
    if let Some(name) = names
        .iter()
        .find(|n| n.starts_with("wasi:") && n.contains("@0.3"))
    {
        return Err(Error::InvalidModule(format!(
            "the component uses WASI 0.3 (`{name}`), which wpool does not run yet; {ACCEPTED}: \
             build for WASI 0.2 (`wasm32-wasip2`)"
        )));
    }
    let pre = linker.instantiate_pre(component).map_err(|e| {
        Error::InvalidModule(format!(
            "the component imports something wpool does not provide (it links WASI 0.2 and \
             `wpool:task/host`): {}",
            super::error_chain(&e)
        ))
    })?;
    if let Ok(task) = TaskPre::new(pre.clone()) {
        return Ok(ComponentPre::Task(task));
    }
    if let Ok(command) = CommandPre::new(pre) {
        return Ok(ComponentPre::Cli(command));
    }
    let exports: Vec<String> = ty
        .exports(engine)
        .map(|(name, _)| format!("`{name}`"))
        .collect();
    Err(Error::InvalidModule(format!(
        "the component implements neither world wpool runs: {ACCEPTED}; it exports {}",
        if exports.is_empty() {
            "nothing".to_string()
        } else {
            exports.join(", ")
        }
    )))
}

/// Runs one task on a prepared component.
pub(crate) async fn run(
    engine: &wasmtime::Engine,
    pre: &TaskPre<ComponentState>,
    input: Vec<u8>,
    cx: &RunContext<'_>,
) -> RunReport {
    let started = Instant::now();
    let deadline = deadline_after(started, cx.limits.timeout);
    let max_output = usize::try_from(cx.limits.max_output).unwrap_or(usize::MAX);
    // Stdout of a component is not its output (its `run` result is), but a
    // component may still print: it goes to the log, like stderr. The output
    // itself is lifted from guest memory, so the memory limit bounds what the
    // host can be made to allocate for it; past `max_output` it is refused.
    let log = LogSink::new(
        usize::try_from(cx.limits.max_log).unwrap_or(usize::MAX),
        cx.on_progress.clone(),
    );
    let mut builder = cx.wasi_builder();
    builder
        .stdin(MemoryInputPipe::new(Vec::new()))
        .stdout(log.clone())
        .stderr(log.clone());
    for (host, guest) in cx.read_only_dirs {
        if let Err(e) = builder.preopened_dir(host, guest, FsPerms::ReadOnly) {
            return RunReport::without_run(Outcome::HostError(format!(
                "cannot open the granted directory {} for the task: {e}",
                host.display()
            )));
        }
    }
    let wasi = builder.build();
    let mut store = Store::new(
        engine,
        ComponentState {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(cx.limits.memory),
            log: log.clone(),
        },
    );
    store.limiter(|s| &mut s.limiter);
    if let Err(e) = cx.arm(&mut store, deadline, true) {
        return RunReport::without_run(Outcome::HostError(super::error_chain(&e)));
    }

    let result = race(
        async {
            let task = pre.instantiate_async(&mut store).await?;
            task.call_run(&mut store, &input).await
        },
        deadline,
        cx.cancel,
    )
    .await;

    let mut output = Vec::new();
    let outcome = match result {
        Ok(Ok(Ok(bytes))) if bytes.len() > max_output => Outcome::OutputTooLarge,
        Ok(Ok(Ok(bytes))) => {
            output = bytes;
            Outcome::Success
        }
        Ok(Ok(Err(message))) => Outcome::Failed(message),
        Ok(Err(e)) => classify(
            Ok(Err(e)),
            store.data().limiter.hit,
            false,
            cx.settings,
            &log,
        ),
        Err(killed) => classify(Err(killed), false, false, cx.settings, &log),
    };
    super::report(store, outcome, output, log, cx, started.elapsed())
}

/// Runs one task on a prepared `wasi:cli/run` command: like a WASI
/// preview 1 command, the input is stdin, the output stdout, stderr the log;
/// returning `ok` (or `exit(ok)`) is success, `err` is exit code 1.
pub(crate) async fn run_cli(
    engine: &wasmtime::Engine,
    pre: &CommandPre<ComponentState>,
    input: Vec<u8>,
    cx: &RunContext<'_>,
) -> RunReport {
    let started = Instant::now();
    let deadline = deadline_after(started, cx.limits.timeout);
    let output = CappedOutput::new(usize::try_from(cx.limits.max_output).unwrap_or(usize::MAX));
    let log = LogSink::new(
        usize::try_from(cx.limits.max_log).unwrap_or(usize::MAX),
        cx.on_progress.clone(),
    );
    let mut builder = cx.wasi_builder();
    builder
        .stdin(MemoryInputPipe::new(input))
        .stdout(output.clone())
        .stderr(log.clone());
    for (host, guest) in cx.read_only_dirs {
        if let Err(e) = builder.preopened_dir(host, guest, FsPerms::ReadOnly) {
            return RunReport::without_run(Outcome::HostError(format!(
                "cannot open the granted directory {} for the task: {e}",
                host.display()
            )));
        }
    }
    let mut store = Store::new(
        engine,
        ComponentState {
            wasi: builder.build(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(cx.limits.memory),
            log: log.clone(),
        },
    );
    store.limiter(|s| &mut s.limiter);
    if let Err(e) = cx.arm(&mut store, deadline, true) {
        return RunReport::without_run(Outcome::HostError(super::error_chain(&e)));
    }

    let result = race(
        async {
            let command = pre.instantiate_async(&mut store).await?;
            match command.wasi_cli_run().call_run(&mut store).await? {
                Ok(()) => Ok(()),
                Err(()) => Err(wasmtime::Error::new(GuestExit(1))),
            }
        },
        deadline,
        cx.cancel,
    )
    .await;

    let outcome = classify(
        result,
        store.data().limiter.hit,
        output.overflowed(),
        cx.settings,
        &log,
    );
    super::report(store, outcome, output.take(), log, cx, started.elapsed())
}
