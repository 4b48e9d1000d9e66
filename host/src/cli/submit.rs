//! `wpool submit`: send a task (or a batch from JSON Lines) to the daemon,
//! and with `--wait` print the result. With no daemon on this machine, the
//! task goes into the local data directory instead (see [`super::embedded`]).

use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use indicatif::{ProgressBar, ProgressStyle};

use super::client::{CallError, Client, is_local};
use super::print::{BatchLine, print_json, print_result, write_line};
use super::server::types::{ModuleInfo, ResultView, SubmitTask, TaskAnswer, TaskView};
use super::submit_args::SubmitArgs;
use super::{Failure, embedded, exit, read_input, write_stdout};
use crate::ModuleHash;
use crate::units::format_duration;

pub(crate) fn execute(args: SubmitArgs) -> Result<u8, Failure> {
    let bytes = std::fs::read(&args.module)
        .with_context(|| format!("cannot read the module {}", args.module.display()))
        .map_err(Failure::bad_input)?;
    let hash = ModuleHash::of(&bytes);
    let client = Client::new(&args.server);

    match ensure_module(&client, &hash, &bytes) {
        Ok(()) => {}
        Err(CallError::Unreachable(cause)) if !args.server.given() && is_local(client.base()) => {
            eprintln!(
                "wpool: no server at {} ({cause}); using the data directory {} directly",
                client.base(),
                args.data_dir.display()
            );
            return embedded::execute(&args, &bytes, &read_single_or_batch(&args)?);
        }
        Err(e) => {
            return Err(e
                .into_failure(client.base())
                .context(args.module.display().to_string()));
        }
    }

    if args.settings.given() {
        // The settings replace the module's; a task queued before runs with
        // them too, as in the data directory.
        client
            .put_json(
                &format!("/v1/modules/{hash}/settings"),
                &args.settings.settings(),
            )
            .map_err(|e| {
                e.into_failure(client.base())
                    .context(args.module.display().to_string())
            })?;
    }
    match &args.inputs {
        Some(path) => batch(&args, &client, &hash, path),
        None => {
            let input = read_input(args.input.as_deref()).map_err(Failure::bad_input)?;
            single(&args, &client, &hash, &input)
        }
    }
}

/// The inputs, for the embedded path: one, or the batch's lines.
fn read_single_or_batch(args: &SubmitArgs) -> Result<Vec<Vec<u8>>, Failure> {
    match &args.inputs {
        Some(path) => read_lines(path).map_err(Failure::bad_input),
        None => Ok(vec![
            read_input(args.input.as_deref()).map_err(Failure::bad_input)?,
        ]),
    }
}

/// Uploads the module unless the server has it.
fn ensure_module(client: &Client, hash: &ModuleHash, bytes: &[u8]) -> Result<(), CallError> {
    match client.get(&format!("/v1/modules/{hash}")) {
        Ok(_) => return Ok(()),
        Err(CallError::Api { status: 404, .. }) => {}
        Err(e) => return Err(e),
    }
    let info: ModuleInfo = client.post_bytes("/v1/modules", bytes)?.json()?;
    if info.hash != hash.to_string() {
        return Err(CallError::Other(anyhow!(
            "the server stored the module as {}, not {hash}",
            info.hash
        )));
    }
    Ok(())
}

fn single(
    args: &SubmitArgs,
    client: &Client,
    hash: &ModuleHash,
    input: &[u8],
) -> Result<u8, Failure> {
    let answer: TaskAnswer = client
        .post_json("/v1/tasks", &args.request(hash, input))
        .and_then(|a| a.json())
        .map_err(|e| e.into_failure(client.base()))?;
    let id = answer.task.id.clone();
    if answer.created == Some(false) {
        eprintln!("wpool: the key names an existing task: {id}");
    }
    if !args.wait {
        if args.server.json {
            print_json(&answer)?;
        } else {
            write_stdout(format!("{id}\n").as_bytes())?;
        }
        return Ok(exit::OK);
    }
    let deadline = args.wait_timeout.map(|d| Instant::now() + d);
    let result = wait_with_spinner(client, &id, deadline)?;
    match result {
        Some(result) => print_result(&result, args.server.json, Some(client)),
        None => Err(Failure::new(
            exit::NOT_FINISHED,
            anyhow!(
                "task {id} has not finished within the wait; `wpool result {id} --wait` waits again"
            ),
        )),
    }
}

/// Long-polls a task's result, showing a spinner with its state on a
/// terminal. `None` when the deadline passed first.
pub(crate) fn wait_with_spinner(
    client: &Client,
    id: &str,
    deadline: Option<Instant>,
) -> Result<Option<ResultView>, Failure> {
    let spinner = ProgressBar::new_spinner();
    spinner.set_style(
        ProgressStyle::with_template("{spinner} {elapsed} task {prefix}: {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    spinner.set_prefix(id.to_string());
    spinner.set_message("waiting");
    spinner.enable_steady_tick(Duration::from_millis(100));
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        spinner.println(format!(
            "wpool: Ctrl-C stops the waiting, not the task: `wpool result {id} --wait` waits \
             again, `wpool cancel {id}` stops it"
        ));
    }
    // Short polls while it runs, so that its progress shows as it comes.
    let mut poll = Duration::from_secs(10);
    let outcome = loop {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if left == Some(Duration::ZERO) {
            break Ok(None);
        }
        let wait = left.map_or(poll, |l| l.min(poll));
        let answer = client.get(&format!(
            "/v1/tasks/{id}/result?wait={}ms",
            wait.as_millis().max(1)
        ));
        match answer {
            Ok(answer) if answer.status == 200 => {
                break answer
                    .json::<ResultView>()
                    .map(Some)
                    .map_err(|e| e.into_failure(client.base()));
            }
            Ok(answer) => {
                if let Ok(task) = answer.json::<TaskView>() {
                    let progress = task
                        .progress
                        .map(|(done, total)| format!(" ({done}/{total})"))
                        .unwrap_or_default();
                    spinner.set_message(format!("{}{progress}", task.state));
                    poll = if task.state == "running" {
                        Duration::from_secs(1)
                    } else {
                        Duration::from_secs(10)
                    };
                }
            }
            Err(e) => break Err(e.into_failure(client.base())),
        }
    };
    spinner.finish_and_clear();
    outcome
}

fn bar(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>10} [{bar:40}] {pos}/{len} {rate} eta {eta}")
            .map(|style| {
                // A whole number of tasks per second, not `2,082.3542/s`.
                style.with_key(
                    "rate",
                    |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = write!(w, "{:.0}/s", state.per_sec());
                    },
                )
            })
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(what.to_string());
    bar
}

fn batch(
    args: &SubmitArgs,
    client: &Client,
    hash: &ModuleHash,
    path: &Path,
) -> Result<u8, Failure> {
    let inputs = read_lines(path).map_err(Failure::bad_input)?;
    let total = inputs.len();
    let submitted = bar(total, "submitted");
    let ids: Vec<Mutex<Result<String, String>>> =
        (0..total).map(|_| Mutex::new(Err(String::new()))).collect();
    let next = AtomicUsize::new(0);
    let unreachable = Mutex::new(None);
    // Lines the server kept refusing for a reason of its own (a full queue,
    // too many bodies in flight, stored outputs at their bound) until the
    // submission gave up: exit 7, as a single submit refused so.
    let gave_up = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..args.concurrency.clamp(1, 64) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let outcome = submit_with_backoff(client, &args.request(hash, &inputs[i]));
                    let entry = match outcome {
                        Ok(answer) => Ok(answer.task.id),
                        Err(CallError::Api {
                            status: 429 | 503,
                            message,
                            ..
                        }) => {
                            gave_up.fetch_add(1, Ordering::Relaxed);
                            Err(format!(
                                "{message} (still refused after {} of retries; submit this \
                                 line again later)",
                                format_duration(BACKPRESSURE_PATIENCE)
                            ))
                        }
                        Err(CallError::Api { message, .. }) => Err(message),
                        Err(CallError::Unreachable(cause)) => {
                            *unreachable.lock().unwrap_or_else(|e| e.into_inner()) =
                                Some(cause.clone());
                            Err(format!("no server: {cause}"))
                        }
                        Err(CallError::Other(e)) => Err(format!("{e:#}")),
                    };
                    *ids[i].lock().unwrap_or_else(|e| e.into_inner()) = entry;
                    submitted.inc(1);
                }
            });
        }
    });
    submitted.finish();
    let ids: Vec<Result<String, String>> = ids
        .into_iter()
        .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
        .collect();
    let refused = ids.iter().filter(|r| r.is_err()).count();

    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut failed = 0usize;
    if !args.wait {
        for (i, entry) in ids.iter().enumerate() {
            let line = match entry {
                Ok(id) => BatchLine {
                    line: i + 1,
                    id: Some(id),
                    error: None,
                    result: None,
                },
                Err(e) => BatchLine {
                    line: i + 1,
                    id: None,
                    error: Some(e.clone()),
                    result: None,
                },
            };
            write_line(&mut out, &line)?;
        }
    } else {
        let finished = bar(total - refused, "finished");
        let deadline = args.wait_timeout.map(|d| Instant::now() + d);
        let results: Vec<Mutex<Option<Result<ResultView, String>>>> =
            (0..total).map(|_| Mutex::new(None)).collect();
        let next = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..args.concurrency.clamp(1, 64) {
                scope.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= total {
                            break;
                        }
                        let Ok(id) = &ids[i] else { continue };
                        let result = poll_result(client, id, deadline);
                        *results[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
                        finished.inc(1);
                    }
                });
            }
        });
        finished.finish();
        for (i, entry) in ids.iter().enumerate() {
            let result = results[i].lock().unwrap_or_else(|e| e.into_inner()).take();
            let line = match (entry, &result) {
                (Err(e), _) => BatchLine {
                    line: i + 1,
                    id: None,
                    error: Some(e.clone()),
                    result: None,
                },
                (Ok(_), Some(Ok(result))) => {
                    if result.state != "succeeded" {
                        failed += 1;
                    }
                    BatchLine {
                        line: i + 1,
                        id: None,
                        error: None,
                        result: Some(result),
                    }
                }
                (Ok(id), Some(Err(e))) => {
                    failed += 1;
                    BatchLine {
                        line: i + 1,
                        id: Some(id),
                        error: Some(e.clone()),
                        result: None,
                    }
                }
                (Ok(id), None) => BatchLine {
                    line: i + 1,
                    id: Some(id),
                    error: None,
                    result: None,
                },
            };
            write_line(&mut out, &line)?;
        }
    }
    let _ = out.flush();
    if let Some(cause) = unreachable.into_inner().unwrap_or_else(|e| e.into_inner())
        && refused == total
    {
        return Err(CallError::Unreachable(cause).into_failure(client.base()));
    }
    eprintln!(
        "wpool: {} of {total} tasks submitted{}",
        total - refused,
        if args.wait {
            format!(", {failed} did not succeed")
        } else {
            String::new()
        }
    );
    Ok(if gave_up.load(Ordering::Relaxed) > 0 {
        exit::REFUSED
    } else if refused > 0 {
        exit::BAD_INPUT
    } else if failed > 0 {
        exit::TASK_FAILED
    } else {
        exit::OK
    })
}

/// How long one line of a batch is retried while the server refuses it
/// for backpressure (429, 503) before the submission gives up on it.
const BACKPRESSURE_PATIENCE: Duration = Duration::from_secs(300);

/// Submits one task, waiting and retrying (50 ms doubling to 5 s, with
/// jitter) while the server answers 429 or 503: a full queue drains, as
/// the library's `submit` waits for room.
fn submit_with_backoff(client: &Client, request: &SubmitTask) -> Result<TaskAnswer, CallError> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(50);
    loop {
        match client
            .post_json("/v1/tasks", request)
            .and_then(|a| a.json::<TaskAnswer>())
        {
            Err(CallError::Api {
                status: 429 | 503, ..
            }) if started.elapsed() < BACKPRESSURE_PATIENCE => {
                let jitter = Duration::from_millis(fastrand::u64(0..=pause.as_millis() as u64 / 2));
                std::thread::sleep(pause + jitter);
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            other => return other,
        }
    }
}

fn poll_result(client: &Client, id: &str, deadline: Option<Instant>) -> Result<ResultView, String> {
    loop {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if left == Some(Duration::ZERO) {
            return Err("not finished within the wait".into());
        }
        let wait = left.map_or(Duration::from_secs(10), |l| l.min(Duration::from_secs(10)));
        match client.get(&format!(
            "/v1/tasks/{id}/result?wait={}ms",
            wait.as_millis().max(1)
        )) {
            Ok(answer) if answer.status == 200 => {
                return answer
                    .json::<ResultView>()
                    .map_err(|_| "a broken answer".to_string());
            }
            Ok(_) => {}
            Err(CallError::Api { message, .. }) => return Err(message),
            Err(CallError::Unreachable(cause)) => return Err(format!("no server: {cause}")),
            Err(CallError::Other(e)) => return Err(format!("{e:#}")),
        }
    }
}

/// The inputs of a batch: each non-empty line, checked to be JSON.
fn read_lines(path: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let reader: Box<dyn BufRead> = if path.as_os_str() == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(path)
                .with_context(|| format!("cannot read the inputs {}", path.display()))?,
        ))
    };
    let mut inputs = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("cannot read the inputs {}", path.display()))?;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        serde_json::from_str::<serde_json::Value>(line).with_context(|| {
            format!(
                "{} line {}: not JSON (each line is one task's input)",
                path.display(),
                n + 1
            )
        })?;
        inputs.push(line.as_bytes().to_vec());
    }
    if inputs.is_empty() {
        anyhow::bail!("{} holds no inputs", path.display());
    }
    Ok(inputs)
}
