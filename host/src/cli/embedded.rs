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
use super::submit_args::{CHUNK_LINES, InputLine, SubmitArgs};
use super::{Failure, exit, write_stdout};
use crate::backend::{Backend, EmbeddedBackend, Enqueued};
use crate::store::{SledOptions, SledStore, Store};
use crate::{
    EngineConfig, Executor, ModuleHash, Pool, PoolConfig, TaskId, TaskRecord, TaskSpec, now_millis,
};

pub(crate) fn execute(
    args: &SubmitArgs,
    bytes: &[u8],
    inputs: &[InputLine],
) -> Result<u8, Failure> {
    let hash = ModuleHash::of(bytes);
    // Per line: its spec, or why it is refused.
    let specs: Vec<Result<TaskSpec, String>> = inputs
        .iter()
        .map(|line| {
            args.request(&hash, &line.input)
                .to_spec(line.input.clone())
                .map_err(|e| match e {
                    SpecError::Invalid(_, message) => message,
                    SpecError::InputTooLarge(size, limit) => {
                        format!("the input is {size} bytes, more than the limit of {limit}")
                    }
                })
        })
        .collect();
    if args.inputs.is_none()
        && let Some(Err(message)) = specs.first()
    {
        return Err(Failure::bad_input(anyhow!(message.clone())));
    }
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
        run_embedded(args, store, bytes, inputs, specs)
    } else {
        queue_only(args, &store, bytes, inputs, specs)
    }
}

/// Stores the tasks as queued (or scheduled), a store write per chunk of
/// lines, without running anything (a [`Pool`] would start the
/// directory's other queued tasks too).
fn queue_only(
    args: &SubmitArgs,
    store: &Arc<dyn Store>,
    bytes: &[u8],
    inputs: &[InputLine],
    specs: Vec<Result<TaskSpec, String>>,
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
    let mut records: Vec<Result<TaskRecord, String>> = Vec::with_capacity(specs.len());
    for spec in specs {
        records.push(match spec {
            Ok(spec) => match crate::pool::new_record(&executor, spec, module.hash(), now) {
                Ok(record) => Ok(record),
                Err(e @ (crate::Error::InvalidTask(_) | crate::Error::InvalidLimit { .. })) => {
                    Err(e.to_string())
                }
                Err(e) => return Err(Failure::internal(e)),
            },
            Err(message) => Err(message),
        });
    }
    if args.inputs.is_none()
        && let Some(Err(message)) = records.first()
    {
        return Err(Failure::bad_input(anyhow!(message.clone())));
    }
    // Opening the backend is a restart of the directory's queue: no pool
    // runs, so nothing starts.
    let backend = EmbeddedBackend::open(store.clone()).map_err(Failure::internal)?;
    let mut outcomes: Vec<Result<TaskId, String>> = Vec::with_capacity(records.len());
    executor
        .handle()
        .block_on(async {
            backend.put_module(&module.hash(), bytes).await?;
            if args.settings.given() {
                backend
                    .put_module_settings(&module.hash(), &args.settings.settings())
                    .await?;
            }
            let mut records = records.into_iter().peekable();
            while records.peek().is_some() {
                let chunk: Vec<Result<TaskRecord, String>> =
                    records.by_ref().take(CHUNK_LINES).collect();
                let valid: Vec<TaskRecord> = chunk
                    .iter()
                    .filter_map(|r| r.as_ref().ok().cloned())
                    .collect();
                let mut enqueued = backend.enqueue(valid).await?.into_iter();
                for record in chunk {
                    outcomes.push(match record {
                        Ok(_) => match enqueued.next() {
                            Some(Enqueued::New(record)) => Ok(record.id),
                            Some(Enqueued::Existing(id)) => Ok(id),
                            None => Err("the store answered for fewer tasks".to_string()),
                        },
                        Err(message) => Err(message),
                    });
                }
            }
            Ok::<_, crate::Error>(())
        })
        .map_err(Failure::internal)?;
    let queued = outcomes.iter().filter(|o| o.is_ok()).count();
    eprintln!(
        "wpool: queued {queued} task(s) in {}; they run when `wpool serve --data-dir {}` starts",
        args.data_dir.display(),
        args.data_dir.display()
    );
    print_ids(args, inputs, &outcomes)
}

fn args_module(args: &SubmitArgs) -> String {
    args.module.display().to_string()
}

/// Lines refused, on stderr, by their line in the file.
fn tell_refused(args: &SubmitArgs, inputs: &[InputLine], errors: &[(usize, &str)]) {
    let name = args
        .inputs
        .as_deref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    for (i, message) in errors.iter().take(10) {
        eprintln!("wpool: {name} line {}: {message}", inputs[*i].line);
    }
    if errors.len() > 10 {
        eprintln!("wpool: ... and {} more lines refused", errors.len() - 10);
    }
}

fn print_ids(
    args: &SubmitArgs,
    inputs: &[InputLine],
    outcomes: &[Result<TaskId, String>],
) -> Result<u8, Failure> {
    if args.inputs.is_none() {
        return match &outcomes[0] {
            Ok(id) if args.server.json => {
                print_json(&serde_json::json!({ "id": id.to_string(), "embedded": true }))
                    .map(|()| exit::OK)
            }
            Ok(id) => write_stdout(format!("{id}\n").as_bytes()).map(|()| exit::OK),
            Err(message) => Err(Failure::bad_input(anyhow!(message.clone()))),
        };
    }
    let errors: Vec<(usize, &str)> = outcomes
        .iter()
        .enumerate()
        .filter_map(|(i, o)| o.as_ref().err().map(|e| (i, e.as_str())))
        .collect();
    tell_refused(args, inputs, &errors);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (outcome, input) in outcomes.iter().zip(inputs) {
        let id = outcome.as_ref().ok().map(ToString::to_string);
        write_line(
            &mut out,
            &BatchLine {
                line: input.line,
                id: id.as_deref(),
                existing: None,
                error: outcome.as_ref().err().cloned(),
                result: None,
            },
        )?;
    }
    let _ = out.flush();
    Ok(if errors.is_empty() {
        exit::OK
    } else {
        exit::BAD_INPUT
    })
}

/// Runs an embedded pool over the store until the tasks finish; they go
/// in with [`Pool::submit_many`], a chunk of lines at a time.
fn run_embedded(
    args: &SubmitArgs,
    store: Arc<dyn Store>,
    bytes: &[u8],
    inputs: &[InputLine],
    specs: Vec<Result<TaskSpec, String>>,
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
        // Per line: its task, or why it was refused.
        let mut tasks: Vec<Result<TaskId, String>> = Vec::with_capacity(specs.len());
        let mut specs = specs.into_iter().peekable();
        while specs.peek().is_some() {
            let chunk: Vec<Result<TaskSpec, String>> = specs.by_ref().take(CHUNK_LINES).collect();
            // Where each spec sent goes among the lines.
            let mut places = Vec::new();
            let mut valid = Vec::new();
            for spec in chunk {
                match spec {
                    Ok(spec) => {
                        places.push(tasks.len());
                        valid.push(spec);
                        tasks.push(Err(String::new()));
                    }
                    Err(message) => tasks.push(Err(message)),
                }
            }
            let answers = pool.submit_many(valid).await.map_err(Failure::internal)?;
            for (place, answer) in places.into_iter().zip(answers) {
                tasks[place] = answer.map(|task| task.id()).map_err(|e| e.to_string());
            }
        }
        let mut results = Vec::with_capacity(tasks.len());
        for task in &tasks {
            let result = match task {
                Ok(id) => Some(
                    match deadline {
                        Some(d) => pool.wait_timeout(*id, d).await,
                        None => pool.wait(*id).await.map(Some),
                    }
                    .map_err(Failure::internal)?,
                ),
                Err(_) => None,
            };
            results.push(result);
        }
        let _ = pool.stop_with_grace(Duration::from_secs(5)).await;
        Ok::<_, Failure>((tasks, results))
    });
    let (tasks, results) = outcome?;
    if args.inputs.is_none() {
        let id = match &tasks[0] {
            Ok(id) => id,
            Err(message) => return Err(Failure::bad_input(anyhow!(message.clone()))),
        };
        return match results[0].as_ref().and_then(Option::as_ref) {
            Some(result) => print_result(&ResultView::from(result), args.server.json, None),
            None => Err(Failure::new(
                exit::NOT_FINISHED,
                anyhow!("task {id} has not finished within the wait; it stays queued"),
            )),
        };
    }
    let errors: Vec<(usize, &str)> = tasks
        .iter()
        .enumerate()
        .filter_map(|(i, t)| t.as_ref().err().map(|e| (i, e.as_str())))
        .collect();
    tell_refused(args, inputs, &errors);
    let mut failed = 0;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for ((task, result), input) in tasks.iter().zip(&results).zip(inputs) {
        let line = match task {
            Err(message) => BatchLine {
                line: input.line,
                id: None,
                existing: None,
                error: Some(message.clone()),
                result: None,
            },
            Ok(id) => {
                let view = result
                    .as_ref()
                    .and_then(Option::as_ref)
                    .map(ResultView::from);
                if view.as_ref().is_none_or(|v| v.state != "succeeded") {
                    failed += 1;
                }
                let id = id.to_string();
                write_line(
                    &mut out,
                    &BatchLine {
                        line: input.line,
                        id: view.is_none().then_some(id.as_str()),
                        existing: None,
                        error: None,
                        result: view.as_ref(),
                    },
                )?;
                continue;
            }
        };
        write_line(&mut out, &line)?;
    }
    let _ = out.flush();
    Ok(if !errors.is_empty() {
        exit::BAD_INPUT
    } else if failed > 0 {
        exit::TASK_FAILED
    } else {
        exit::OK
    })
}
