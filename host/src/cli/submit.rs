//! `wpool submit`: send a task (or a batch from JSON Lines) to the daemon,
//! and with `--wait` print the result. With no daemon on this machine, the
//! task goes into the local data directory instead (see [`super::embedded`]).

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use indicatif::{ProgressBar, ProgressStyle};

use super::client::{CallError, Client, is_local};
use super::print::{BatchLine, batch_bar, print_json, print_result, write_line};
use super::server::types::{
    BatchAnswer, BatchItem, ModuleInfo, ResultView, SubmitTask, TaskAnswer, TaskView,
};
use super::submit_args::{CHUNK_LINES, InputLine, SubmitArgs, read_lines};
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
fn read_single_or_batch(args: &SubmitArgs) -> Result<Vec<InputLine>, Failure> {
    match &args.inputs {
        Some(path) => read_lines(path).map_err(Failure::bad_input),
        None => Ok(vec![InputLine {
            line: 1,
            input: read_input(args.input.as_deref()).map_err(Failure::bad_input)?,
        }]),
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
    let request = args.request(hash, input);
    let answer: TaskAnswer = retrying(args.retry_for, || {
        client.post_json("/v1/tasks", &request)?.json()
    })
    .map_err(|e| {
        let gave_up = e.is_backpressure() && !args.retry_for.is_zero();
        let failure = e.into_failure(client.base());
        if gave_up {
            failure.context(format!(
                "still refused after {} of retries (--retry-for); submit again later",
                format_duration(args.retry_for)
            ))
        } else {
            failure
        }
    })?;
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

/// Bytes of inputs per batch request, roughly: a chunk ends before it
/// would pass them (a line larger goes alone).
const CHUNK_BYTES: usize = 4 << 20;

/// The chunks of a batch: ranges of `lines`, each at most
/// [`CHUNK_LINES`] lines and about [`CHUNK_BYTES`] of inputs.
fn chunks(lines: &[InputLine]) -> Vec<std::ops::Range<usize>> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, line) in lines.iter().enumerate() {
        let size = line.input.len() * 4 / 3 + 256;
        if i > start && (i - start == CHUNK_LINES || bytes + size > CHUNK_BYTES) {
            chunks.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < lines.len() {
        chunks.push(start..lines.len());
    }
    chunks
}

/// What became of one line of a batch.
#[derive(Clone, Debug)]
enum Sent {
    /// Its task: created, or named by its idempotency key.
    Task { id: String, created: bool },
    /// Refused for itself (a malformed task, an input too large).
    Refused(String),
    /// Its batch was refused, or not sent after an earlier one failed.
    Failed(String),
}

fn batch(
    args: &SubmitArgs,
    client: &Client,
    hash: &ModuleHash,
    path: &Path,
) -> Result<u8, Failure> {
    let inputs = read_lines(path).map_err(Failure::bad_input)?;
    let total = inputs.len();
    let chunks = chunks(&inputs);
    let submitted = batch_bar(total, "submitted");
    let sent: Vec<Mutex<Option<Sent>>> = (0..total).map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    // The first batch refused for good: no other is sent after it.
    let fatal: Mutex<Option<CallError>> = Mutex::new(None);
    let stop = AtomicBool::new(false);
    // Lines the server kept refusing for a reason of its own (a full queue,
    // too many bodies in flight, stored outputs at their bound) until the
    // submission gave up: exit 7, as a single submit refused so.
    let gave_up = AtomicBool::new(false);
    std::thread::scope(|scope| {
        for _ in 0..args.concurrency.clamp(1, 64).min(chunks.len()) {
            scope.spawn(|| {
                loop {
                    let c = next.fetch_add(1, Ordering::Relaxed);
                    if c >= chunks.len() || stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let range = chunks[c].clone();
                    let requests: Vec<SubmitTask> = inputs[range.clone()]
                        .iter()
                        .map(|line| args.request(hash, &line.input))
                        .collect();
                    let outcome = match send_batch(client, &requests, args.retry_for) {
                        Ok(answers) => answers,
                        Err(e) => {
                            let message = match &e {
                                CallError::Api { message, .. } if e.is_backpressure() => {
                                    gave_up.store(true, Ordering::Relaxed);
                                    format!(
                                        "{message} (still refused after {} of retries, \
                                         --retry-for; submit this line again later)",
                                        format_duration(args.retry_for)
                                    )
                                }
                                CallError::Api { message, .. } => message.clone(),
                                CallError::Unreachable(cause) => format!("no server: {cause}"),
                                CallError::Other(e) => format!("{e:#}"),
                            };
                            stop.store(true, Ordering::Relaxed);
                            let mut fatal = fatal.lock().unwrap_or_else(|e| e.into_inner());
                            if fatal.is_none() {
                                *fatal = Some(e);
                            }
                            vec![Sent::Failed(message); range.len()]
                        }
                    };
                    for (i, outcome) in range.clone().zip(outcome) {
                        *sent[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(outcome);
                    }
                    submitted.inc(range.len() as u64);
                }
            });
        }
    });
    submitted.finish();
    let fatal = fatal.into_inner().unwrap_or_else(|e| e.into_inner());
    let sent: Vec<Sent> = sent
        .into_iter()
        .map(|m| {
            m.into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .unwrap_or_else(|| {
                    Sent::Failed(
                        "not sent: an earlier batch was refused (see the message below)".into(),
                    )
                })
        })
        .collect();
    let refused = sent
        .iter()
        .filter(|s| !matches!(s, Sent::Task { .. }))
        .count();

    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut failed = 0usize;
    let line_of = |entry: &Sent| match entry {
        Sent::Task { id, created } => (Some(id.clone()), None, (!created).then_some(true)),
        Sent::Refused(e) | Sent::Failed(e) => (None, Some(e.clone()), None),
    };
    // The lines refused, on stderr too, by their line in the file.
    let mut told = 0;
    for (i, entry) in sent.iter().enumerate() {
        if let Sent::Refused(e) = entry {
            told += 1;
            if told <= 10 {
                eprintln!("wpool: {} line {}: {e}", path.display(), inputs[i].line);
            }
        }
    }
    if told > 10 {
        eprintln!("wpool: ... and {} more lines refused", told - 10);
    }
    if !args.wait {
        for (i, entry) in sent.iter().enumerate() {
            let (id, error, existing) = line_of(entry);
            write_line(
                &mut out,
                &BatchLine {
                    line: inputs[i].line,
                    id: id.as_deref(),
                    existing,
                    error,
                    result: None,
                },
            )?;
        }
    } else {
        let finished = batch_bar(total - refused, "finished");
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
                        let Sent::Task { id, .. } = &sent[i] else {
                            continue;
                        };
                        let result = poll_result(client, id, deadline);
                        *results[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
                        finished.inc(1);
                    }
                });
            }
        });
        finished.finish();
        for (i, entry) in sent.iter().enumerate() {
            let result = results[i].lock().unwrap_or_else(|e| e.into_inner()).take();
            let (id, error, existing) = line_of(entry);
            let line = inputs[i].line;
            let line = match (error, &result) {
                (Some(error), _) => BatchLine {
                    line,
                    id: None,
                    existing: None,
                    error: Some(error),
                    result: None,
                },
                (None, Some(Ok(result))) => {
                    if result.state != "succeeded" {
                        failed += 1;
                    }
                    BatchLine {
                        line,
                        id: None,
                        existing,
                        error: None,
                        result: Some(result),
                    }
                }
                (None, Some(Err(e))) => {
                    failed += 1;
                    BatchLine {
                        line,
                        id: id.as_deref(),
                        existing,
                        error: Some(e.clone()),
                        result: None,
                    }
                }
                (None, None) => BatchLine {
                    line,
                    id: id.as_deref(),
                    existing,
                    error: None,
                    result: None,
                },
            };
            write_line(&mut out, &line)?;
        }
    }
    let _ = out.flush();
    drop(out);
    eprintln!(
        "wpool: {} of {total} tasks submitted{}",
        total - refused,
        if args.wait {
            format!(", {failed} did not succeed")
        } else {
            String::new()
        }
    );
    if gave_up.load(Ordering::Relaxed) {
        if let Some(CallError::Api { message, .. }) = &fatal {
            eprintln!(
                "wpool: {message}: still refused after {} of retries (--retry-for); the lines \
                 not submitted carry it as their `error` on stdout: submit them again later",
                format_duration(args.retry_for)
            );
        }
        return Ok(exit::REFUSED);
    }
    if let Some(fatal) = fatal {
        return Err(fatal.into_failure(client.base()));
    }
    Ok(if refused > 0 {
        exit::BAD_INPUT
    } else if failed > 0 {
        exit::TASK_FAILED
    } else {
        exit::OK
    })
}

/// Calls `call` until it is not refused for backpressure (429, 503) or
/// `retry_for` has passed, waiting between calls 50 ms doubling to 5 s,
/// with jitter: a full queue drains, as the library's `submit` waits for
/// room. Its last answer then.
fn retrying<T>(
    retry_for: Duration,
    mut call: impl FnMut() -> Result<T, CallError>,
) -> Result<T, CallError> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(50);
    loop {
        match call() {
            Err(e) if e.is_backpressure() && started.elapsed() < retry_for => {
                let jitter = Duration::from_millis(fastrand::u64(0..=pause.as_millis() as u64 / 2));
                // Never past the patience: the last try comes at its end.
                let left = retry_for.saturating_sub(started.elapsed());
                std::thread::sleep((pause + jitter).min(left));
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            answer => return answer,
        }
    }
}

/// Submits `requests` as one batch, retrying it while the server refuses
/// it for backpressure (see [`retrying`]). A batch past the server's body
/// limit (413) is sent again in halves. Per request: its task, or why the
/// server refused it alone.
fn send_batch(
    client: &Client,
    requests: &[SubmitTask],
    retry_for: Duration,
) -> Result<Vec<Sent>, CallError> {
    let answer = retrying(retry_for, || {
        client
            .post_json("/v1/tasks:batch", &requests)?
            .json::<BatchAnswer>()
    });
    match answer {
        Ok(answer) => {
            if answer.items.len() != requests.len() {
                return Err(CallError::Other(anyhow!(
                    "the server answered {} items for a batch of {}",
                    answer.items.len(),
                    requests.len()
                )));
            }
            Ok(answer.items.into_iter().map(sent_item).collect())
        }
        Err(CallError::Api { status: 413, .. }) if requests.len() > 1 => {
            let (first, second) = requests.split_at(requests.len() / 2);
            let mut answers = send_batch(client, first, retry_for)?;
            answers.extend(send_batch(client, second, retry_for)?);
            Ok(answers)
        }
        Err(CallError::Api {
            status: 413,
            message,
            ..
        }) => Ok(vec![Sent::Refused(message)]),
        Err(CallError::Api {
            status: 404, code, ..
        }) if code == "not_found" => Err(CallError::Api {
            status: 404,
            code,
            message: format!(
                "the server at {} takes no batches (POST /v1/tasks:batch): it is older \
                 than this wpool; upgrade it",
                client.base()
            ),
        }),
        Err(e) => Err(e),
    }
}

/// A line's fate from the server's answer for it.
fn sent_item(item: BatchItem) -> Sent {
    match (item.id, item.error) {
        (Some(id), None) => Sent::Task {
            id,
            created: item.created.unwrap_or(true),
        },
        (_, Some(error)) => {
            // The server names the item by its place in the request; the
            // line says which of the file it is.
            let prefix = format!("item {}: ", item.index);
            let message = error
                .message
                .strip_prefix(&prefix)
                .unwrap_or(&error.message);
            Sent::Refused(format!("{message} ({})", error.code))
        }
        (None, None) => Sent::Failed("the server's answer names no task for it".into()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_hold_at_most_their_lines_and_bytes() {
        let line = |n: usize, size: usize| InputLine {
            line: n,
            input: vec![b'1'; size],
        };
        let small: Vec<InputLine> = (1..=1201).map(|n| line(n, 10)).collect();
        assert_eq!(chunks(&small), [0..500, 500..1000, 1000..1201]);
        let big = vec![line(1, 10), line(2, 5 << 20), line(3, 10)];
        assert_eq!(chunks(&big), [0..1, 1..2, 2..3], "a large line goes alone");
    }
}
