//! `wpool submit`: send a task (or a batch from JSON Lines) to the daemon,
//! and with `--wait` print the result. With no daemon on this machine, the
//! task goes into the local data directory instead (see [`super::embedded`]).

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use base64::Engine as _;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::client::{CallError, Client, ServerArgs, is_local};
use super::server::types::{
    BackoffRequest, HumanCount, HumanDuration, HumanSize, ModuleInfo, ResultView, SubmitTask,
    TaskAnswer, TaskView,
};
use super::{Failure, LimitArgs, embedded, exit, read_input, write_stdout};
use crate::ModuleHash;
use crate::units::{format_duration, parse_duration};

/// Submit a task to the daemon (or a batch, one task per line of
/// `--inputs`), and with `--wait` print its output.
///
/// The module is uploaded only if the server lacks it (by hash). With no
/// daemon reachable on this machine, the task is queued in the local data
/// directory; with `--wait`, an embedded pool runs it there.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  wpool submit task.wasm --input data.json --wait\n  wpool submit task.wasm --inputs inputs.jsonl --wait > results.jsonl\n  echo '{\"n\": 3}' | wpool submit task.wasm --timeout 5s --label team=a"
)]
pub(crate) struct SubmitArgs {
    /// The task: a WASI command module (.wasm) or a `wpool:task` component.
    pub(crate) module: PathBuf,
    /// The input: a file, or `-` for stdin. Sent as its exact bytes.
    #[arg(short, long, value_name = "FILE", conflicts_with = "inputs")]
    input: Option<PathBuf>,
    /// A batch: one task per line of this JSON Lines file (`-` for stdin);
    /// each line is one task's input. Results are written as JSON lines.
    #[arg(long, value_name = "FILE.jsonl")]
    pub(crate) inputs: Option<PathBuf>,
    /// Wait for the result and print it (a spinner shows the task's state).
    #[arg(short, long)]
    pub(crate) wait: bool,
    /// Give up waiting after this long (exit 6), e.g. `10m`.
    #[arg(long, value_parser = parse_duration, requires = "wait")]
    pub(crate) wait_timeout: Option<Duration>,
    /// Higher runs first. Default: 0.
    #[arg(long, allow_hyphen_values = true)]
    priority: Option<i32>,
    #[command(flatten)]
    limits: LimitArgs,
    /// Module run settings (kept with the module; for now only when no
    /// server answers and the data directory is used directly).
    #[command(flatten)]
    pub(crate) settings: super::settings::SettingsArgs,
    /// How many times the task may run in all (1 = no retry). A run lost
    /// with its host is not an attempt.
    #[arg(long)]
    attempts: Option<u32>,
    /// How many runs may be lost with their host (a crash, a lost lease)
    /// before the task ends `interrupted` (default 3).
    #[arg(long, value_name = "N")]
    max_interruptions: Option<u32>,
    /// The wait before the first retry, e.g. `1s` (it doubles each time).
    #[arg(long, value_parser = parse_duration)]
    backoff: Option<Duration>,
    /// Start no sooner than this from now, e.g. `10m`.
    #[arg(long, value_parser = parse_duration)]
    delay: Option<Duration>,
    /// Expire (never start) if not started within this, e.g. `1h`.
    #[arg(long, value_parser = parse_duration)]
    expire_after: Option<Duration>,
    /// An idempotency key: submitting again with it returns the first task.
    #[arg(long, value_name = "KEY")]
    key: Option<String>,
    /// A label `key=value`; repeat for several.
    #[arg(long = "label", value_name = "K=V", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Submissions in flight at once for a batch.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// The data directory used when no daemon is reachable.
    #[arg(
        long,
        env = "WPOOL_DATA_DIR",
        value_name = "DIR",
        default_value = "wpool-data"
    )]
    pub(crate) data_dir: PathBuf,
    #[command(flatten)]
    pub(crate) server: ServerArgs,
}

pub(crate) fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("`{text}` is not a label: write key=value"))
}

impl SubmitArgs {
    /// The request for one input.
    pub(crate) fn request(&self, module: &ModuleHash, input: &[u8]) -> SubmitTask {
        SubmitTask {
            module: module.to_string(),
            input: None,
            input_base64: (!input.is_empty())
                .then(|| base64::engine::general_purpose::STANDARD.encode(input)),
            priority: self.priority,
            timeout: self.limits.timeout.map(HumanDuration),
            fuel: self.limits.fuel.map(HumanCount),
            memory: self.limits.memory.map(HumanSize),
            max_output: self.limits.max_output.map(HumanSize),
            max_log: self.limits.max_log.map(HumanSize),
            max_attempts: self.attempts,
            max_interruptions: self.max_interruptions,
            backoff: self.backoff.map(|d| BackoffRequest {
                initial: Some(HumanDuration(d)),
                ..BackoffRequest::default()
            }),
            delay: self.delay.map(HumanDuration),
            run_at: None,
            expire_after: self.expire_after.map(HumanDuration),
            expire_at: None,
            idempotency_key: self.key.clone(),
            labels: self.labels.iter().cloned().collect::<BTreeMap<_, _>>(),
        }
    }
}

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
    let outcome = loop {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if left == Some(Duration::ZERO) {
            break Ok(None);
        }
        let wait = left.map_or(Duration::from_secs(10), |l| l.min(Duration::from_secs(10)));
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
                }
            }
            Err(e) => break Err(e.into_failure(client.base())),
        }
    };
    spinner.finish_and_clear();
    outcome
}

/// Prints a result: its output on stdout and a summary on stderr (or the
/// whole result as JSON); the exit code says whether it succeeded.
///
/// An output too large to be carried in the result is streamed from the
/// server (`client`) to stdout.
pub(crate) fn print_result(
    result: &ResultView,
    json: bool,
    client: Option<&Client>,
) -> Result<u8, Failure> {
    if json {
        print_json(result)?;
    } else {
        match (result.output_bytes(), &result.output_url, client) {
            (Some(bytes), _, _) => write_stdout(&bytes)?,
            (None, Some(url), Some(client)) => {
                let mut out = std::io::stdout().lock();
                client
                    .get_to(url, &mut out)
                    .map_err(|e| e.into_failure(client.base()))?;
                out.flush().map_err(Failure::internal)?;
            }
            (None, _, _) => {
                return Err(Failure::internal(anyhow!(
                    "the result of task {} carries no output and says nowhere to read it",
                    result.id
                )));
            }
        }
        let fuel = result
            .fuel_consumed
            .map(|f| format!(", fuel {f}"))
            .unwrap_or_default();
        let interrupted = match result.interruptions {
            0 => String::new(),
            n => format!(" (its host stopped while it ran {n} time(s); it ran again)"),
        };
        let how = result
            .outcome
            .as_ref()
            .map_or_else(|| result.state.clone(), |o| o.message.clone());
        eprintln!(
            "wpool: task {} {} in {}{fuel}{interrupted}",
            result.id,
            how,
            format_duration(Duration::from_micros(result.duration_us))
        );
        if result.state != "succeeded" && !result.log.is_empty() {
            eprintln!("wpool: log tail:\n{}", result.log.trim_end());
        }
    }
    Ok(if result.state == "succeeded" {
        exit::OK
    } else {
        exit::TASK_FAILED
    })
}

pub(crate) fn print_json(value: &impl serde::Serialize) -> Result<(), Failure> {
    let mut json = serde_json::to_vec_pretty(value).map_err(Failure::internal)?;
    json.push(b'\n');
    write_stdout(&json)
}

fn bar(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>10} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(what.to_string());
    bar
}

/// One line of batch output.
#[derive(Debug, serde::Serialize)]
pub(crate) struct BatchLine<'a> {
    /// 1-based line of the inputs file.
    pub(crate) line: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub(crate) result: Option<&'a ResultView>,
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
    std::thread::scope(|scope| {
        for _ in 0..args.concurrency.clamp(1, 64) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let outcome = client
                        .post_json("/v1/tasks", &args.request(hash, &inputs[i]))
                        .and_then(|a| a.json::<TaskAnswer>());
                    let entry = match outcome {
                        Ok(answer) => Ok(answer.task.id),
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
    Ok(if refused > 0 {
        exit::BAD_INPUT
    } else if failed > 0 {
        exit::TASK_FAILED
    } else {
        exit::OK
    })
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

pub(crate) fn write_line(
    out: &mut impl Write,
    line: &impl serde::Serialize,
) -> Result<(), Failure> {
    let mut json = serde_json::to_vec(line).map_err(Failure::internal)?;
    json.push(b'\n');
    match out.write_all(&json) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Failure::internal(anyhow!(e).context("writing to stdout"))),
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
