//! The component ABI: components of the `wpool:task` world (`wit/task.wit`).
//!
//! The host's bindings are generated from that one file. WASI 0.2 is linked
//! for clocks, random, stdio and io, deny-by-default.

use std::time::Instant;

use wasmtime::Store;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::io::LogSink;
use super::{MemoryLimiter, RunContext, classify, deadline_after, race};
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

/// Checks a compiled component and prepares it for quick instantiation.
pub(crate) fn prepare(
    linker: &Linker<ComponentState>,
    component: &Component,
) -> Result<TaskPre<ComponentState>> {
    let pre = linker.instantiate_pre(component).map_err(|e| {
        Error::InvalidModule(format!(
            "the component imports something wpool does not provide (it links WASI 0.2 and \
             `wpool:task/host`): {}",
            super::error_chain(&e)
        ))
    })?;
    TaskPre::new(pre).map_err(|e| {
        Error::InvalidModule(format!(
            "the component does not implement the `wpool:task/task` world (it must export \
             `run: func(input: list<u8>) -> result<list<u8>, string>`): {}",
            super::error_chain(&e)
        ))
    })
}

/// Runs one task on a prepared component.
pub(crate) async fn run(
    engine: &wasmtime::Engine,
    pre: &TaskPre<ComponentState>,
    input: Vec<u8>,
    cx: &RunContext<'_>,
) -> RunReport {
    let started = Instant::now();
    let deadline = deadline_after(cx.limits.timeout);
    let max_output = usize::try_from(cx.limits.max_output).unwrap_or(usize::MAX);
    // Stdout of a component is not its output (its `run` result is), but a
    // component may still print: it goes to the log, like stderr. The output
    // itself is lifted from guest memory, so the memory limit bounds what the
    // host can be made to allocate for it; past `max_output` it is refused.
    let log = LogSink::new(
        usize::try_from(cx.limits.max_log).unwrap_or(usize::MAX),
        cx.on_progress.clone(),
    );
    let wasi = WasiCtxBuilder::new()
        .envs(cx.env)
        .stdin(MemoryInputPipe::new(Vec::new()))
        .stdout(log.clone())
        .stderr(log.clone())
        .build();
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
    if let Err(e) = cx.arm(&mut store, deadline) {
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
        Ok(Err(e)) => classify(Ok(Err(e)), store.data().limiter.hit, false),
        Err(killed) => classify(Err(killed), false, false),
    };
    let fuel_consumed = cx.fuel_consumed(&store);
    drop(store);
    let (log, progress) = log.finish();
    RunReport {
        outcome,
        output,
        log,
        fuel_consumed,
        duration: started.elapsed(),
        progress,
    }
}
