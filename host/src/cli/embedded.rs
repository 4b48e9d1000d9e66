//! `wpool submit` with no daemon: the local data directory, directly.
//!
//! Without `--wait` the tasks are only queued, durably, in the store; no
//! pool runs (a pool would start the directory's other queued tasks too),
//! and `wpool serve` on the directory runs them later. With `--wait` an
//! embedded pool runs until the submitted tasks finish, then stops, keeping
//! whatever else is queued for the next start.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};

use super::print::{BatchLine, print_json, print_result, write_line};
use super::server::types::{ResultView, SpecError};
use super::submit_args::SubmitArgs;
use super::{Failure, exit, write_stdout};
use crate::backend::{Backend, EmbeddedBackend, Enqueued};
use crate::store::{SledOptions, SledStore, Store};
use crate::{EngineConfig, Executor, ModuleHash, Pool, PoolConfig, TaskId, TaskSpec, now_millis};

pub(crate) fn execute(args: &SubmitArgs, bytes: &[u8], inputs: &[Vec<u8>]) -> Result<u8, Failure> {
    let hash = ModuleHash::of(bytes);
    let specs = inputs
        .iter()
        .map(|input| {
            args.request(&hash, input)
                .to_spec(input.clone())
                .map_err(|e| match e {
                    SpecError::Invalid(_, message) => Failure::bad_input(anyhow!(message)),
                    SpecError::InputTooLarge(size, limit) => Failure::bad_input(anyhow!(
                        "the input is {size} bytes, more than the limit of {limit}"
                    )),
                })
        })
        .collect::<Result<Vec<TaskSpec>, Failure>>()?;
    let store = SledStore::open(&args.data_dir, &SledOptions::new())
        .with_context(|| {
            format!(
                "cannot open the data directory {} (is a `wpool serve` that does not answer \
                 at {} holding it?)",
                args.data_dir.display(),
                args.server.url()
            )
        })
        .map_err(|e| Failure::new(exit::REFUSED, e))?;
    let store: Arc<dyn Store> = Arc::new(store);
    if args.wait {
        run_embedded(args, store, bytes, specs)
    } else {
        queue_only(args, &store, bytes, specs)
    }
}

/// Stores the tasks as queued (or scheduled), in one durable write,
/// without running anything.
fn queue_only(
    args: &SubmitArgs,
    store: &Arc<dyn Store>,
    bytes: &[u8],
    specs: Vec<TaskSpec>,
) -> Result<u8, Failure> {
    let mut config = EngineConfig::new();
    config.workers(1);
    let executor = Executor::new(&config).map_err(Failure::internal)?;
    let module = if args.settings.given() {
        executor.register_with(bytes, args.settings.settings())
    } else {
        executor.register(bytes)
    }
    .with_context(|| args_module(args))
    .map_err(Failure::bad_input)?;
    let now = now_millis();
    let records = specs
        .into_iter()
        .map(|spec| {
            crate::pool::new_record(&executor, spec, module.hash(), now).map_err(|e| match e {
                crate::Error::InvalidTask(_) | crate::Error::InvalidLimit { .. } => {
                    Failure::bad_input(e)
                }
                e => Failure::internal(e),
            })
        })
        .collect::<Result<Vec<_>, Failure>>()?;
    // Opening the backend is a restart of the directory's queue: no pool
    // runs, so nothing starts.
    let backend = EmbeddedBackend::open(store.clone()).map_err(Failure::internal)?;
    let enqueued = executor
        .handle()
        .block_on(async {
            backend.put_module(&module.hash(), bytes).await?;
            if args.settings.given() {
                backend
                    .put_module_settings(&module.hash(), &args.settings.settings())
                    .await?;
            }
            backend.enqueue(records).await
        })
        .map_err(Failure::internal)?;
    let ids: Vec<TaskId> = enqueued
        .into_iter()
        .map(|e| match e {
            Enqueued::New(record) => record.id,
            Enqueued::Existing(id) => id,
        })
        .collect();
    eprintln!(
        "wpool: queued {} task(s) in {}; they run when `wpool serve --data-dir {}` starts",
        ids.len(),
        args.data_dir.display(),
        args.data_dir.display()
    );
    print_ids(args, &ids)
}

fn args_module(args: &SubmitArgs) -> String {
    args.module.display().to_string()
}

fn print_ids(args: &SubmitArgs, ids: &[TaskId]) -> Result<u8, Failure> {
    if args.inputs.is_some() {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        for (i, id) in ids.iter().enumerate() {
            let id = id.to_string();
            write_line(
                &mut out,
                &BatchLine {
                    line: i + 1,
                    id: Some(&id),
                    error: None,
                    result: None,
                },
            )?;
        }
        let _ = out.flush();
    } else if args.server.json {
        print_json(&serde_json::json!({ "id": ids[0].to_string(), "embedded": true }))?;
    } else {
        write_stdout(format!("{}\n", ids[0]).as_bytes())?;
    }
    Ok(exit::OK)
}

/// Runs an embedded pool over the store until the tasks finish.
fn run_embedded(
    args: &SubmitArgs,
    store: Arc<dyn Store>,
    bytes: &[u8],
    specs: Vec<TaskSpec>,
) -> Result<u8, Failure> {
    let mut config = PoolConfig::new();
    config
        .engine_mut()
        .artifact_dir(args.data_dir.join("artifacts"));
    let pool = Pool::with_store(config, store)
        .context("cannot start an embedded pool")
        .map_err(Failure::internal)?;
    let handle = pool.executor().handle().clone();
    handle
        .block_on(async {
            if args.settings.given() {
                pool.register_with(bytes, args.settings.settings()).await
            } else {
                pool.register(bytes).await
            }
        })
        .with_context(|| args_module(args))
        .map_err(Failure::bad_input)?;
    eprintln!(
        "wpool: running embedded in {} until the task(s) finish",
        args.data_dir.display()
    );
    let deadline = args.wait_timeout;
    let outcome = handle.block_on(async {
        let mut handles = Vec::with_capacity(specs.len());
        for spec in specs {
            handles.push(pool.submit(spec).await.map_err(Failure::bad_input)?);
        }
        let mut results = Vec::with_capacity(handles.len());
        for task in &handles {
            let result = match deadline {
                Some(d) => pool.wait_timeout(task.id(), d).await,
                None => pool.wait(task.id()).await.map(Some),
            }
            .map_err(Failure::internal)?;
            results.push((task.id(), result));
        }
        let _ = pool.stop_with_grace(Duration::from_secs(5)).await;
        Ok::<_, Failure>(results)
    });
    let results = outcome?;
    if args.inputs.is_none() {
        let (id, result) = &results[0];
        return match result {
            Some(result) => print_result(&ResultView::from(result), args.server.json, None),
            None => Err(Failure::new(
                exit::NOT_FINISHED,
                anyhow!("task {id} has not finished within the wait; it stays queued"),
            )),
        };
    }
    let mut failed = 0;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (i, (id, result)) in results.iter().enumerate() {
        let view = result.as_ref().map(ResultView::from);
        if view.as_ref().is_none_or(|v| v.state != "succeeded") {
            failed += 1;
        }
        let id = id.to_string();
        write_line(
            &mut out,
            &BatchLine {
                line: i + 1,
                id: view.is_none().then_some(id.as_str()),
                error: None,
                result: view.as_ref(),
            },
        )?;
    }
    let _ = out.flush();
    Ok(if failed > 0 {
        exit::TASK_FAILED
    } else {
        exit::OK
    })
}
