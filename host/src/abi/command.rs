//! The WASI command ABI (wasm32-wasip1 core modules, any language).
//!
//! `_initialize` runs first if the module exports it (the WASI reactor
//! convention, which Rust `cdylib`s follow), then `_start`. The input is
//! stdin, the output stdout, stderr the log; exit code 0 (or returning from
//! `_start`) is success.

use std::time::Instant;

use wasmtime::{InstancePre, Linker, Module, Store};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryInputPipe;

use super::io::{CappedOutput, LogSink};
use super::{MemoryLimiter, RunContext, classify, deadline_after, race};
use crate::{Error, Outcome, Result, RunReport};

/// The store data of a command module.
pub(crate) struct CommandState {
    wasi: WasiP1Ctx,
    limiter: MemoryLimiter,
}

/// The linker of command modules: WASI preview 1, nothing else.
pub(crate) fn linker(engine: &wasmtime::Engine) -> Result<Linker<CommandState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p1::add_to_linker_async(&mut linker, |s: &mut CommandState| &mut s.wasi)
        .map_err(|e| Error::Host(format!("cannot link WASI preview 1: {e}")))?;
    Ok(linker)
}

/// Checks a compiled core module and prepares it for quick instantiation.
pub(crate) fn prepare(
    linker: &Linker<CommandState>,
    module: &Module,
) -> Result<InstancePre<CommandState>> {
    match module.get_export("_start") {
        Some(wasmtime::ExternType::Func(ty))
            if ty.params().len() == 0 && ty.results().len() == 0 => {}
        Some(_) => {
            return Err(Error::InvalidModule(
                "`_start` is exported but is not a function of no arguments and no results".into(),
            ));
        }
        None => {
            return Err(Error::InvalidModule(
                "the core module does not export `_start`: a task module must be a WASI command \
                 (build a binary for wasm32-wasip1, or export `_start`), or a component of the \
                 `wpool:task` world"
                    .into(),
            ));
        }
    }
    for import in module.imports() {
        if import.module() != "wasi_snapshot_preview1" {
            return Err(Error::InvalidModule(format!(
                "the module imports `{}::{}`, which wpool does not provide: a command module \
                 may import only WASI preview 1 (`wasi_snapshot_preview1`)",
                import.module(),
                import.name()
            )));
        }
    }
    linker.instantiate_pre(module).map_err(|e| {
        Error::InvalidModule(format!(
            "the module's imports do not match WASI preview 1: {}",
            super::error_chain(&e)
        ))
    })
}

/// Runs one task on a prepared command module.
pub(crate) async fn run(
    engine: &wasmtime::Engine,
    pre: &InstancePre<CommandState>,
    input: Vec<u8>,
    cx: &RunContext<'_>,
) -> RunReport {
    let started = Instant::now();
    let deadline = deadline_after(cx.limits.timeout);
    let output = CappedOutput::new(usize::try_from(cx.limits.max_output).unwrap_or(usize::MAX));
    let log = LogSink::new(
        usize::try_from(cx.limits.max_log).unwrap_or(usize::MAX),
        cx.on_progress.clone(),
    );
    // Deny by default: no preopened directories, no host environment, no
    // arguments, no network (the builder grants none of these unless asked).
    let wasi = WasiCtxBuilder::new()
        .envs(cx.env)
        .stdin(MemoryInputPipe::new(input))
        .stdout(output.clone())
        .stderr(log.clone())
        .build_p1();
    let mut store = Store::new(
        engine,
        CommandState {
            wasi,
            limiter: MemoryLimiter::new(cx.limits.memory),
        },
    );
    store.limiter(|s| &mut s.limiter);
    if let Err(e) = cx.arm(&mut store, deadline) {
        return RunReport::without_run(Outcome::HostError(super::error_chain(&e)));
    }

    let result = race(
        async {
            let instance = pre.instantiate_async(&mut store).await?;
            if let Ok(init) = instance.get_typed_func::<(), ()>(&mut store, "_initialize") {
                init.call_async(&mut store, ()).await?;
            }
            let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
            start.call_async(&mut store, ()).await
        },
        deadline,
        cx.cancel,
    )
    .await;

    let outcome = classify(result, store.data().limiter.hit, output.overflowed());
    let fuel_consumed = cx.fuel_consumed(&store);
    drop(store);
    let (log, progress) = log.finish();
    RunReport {
        output: output.take(),
        outcome,
        log,
        fuel_consumed,
        duration: started.elapsed(),
        progress,
    }
}
