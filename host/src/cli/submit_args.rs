//! The arguments of `wpool submit`, the request they make, and the lines
//! of a batch's inputs file: apart from
//! `submit` itself so that both of its paths (the daemon, and the data
//! directory in [`super::embedded`]) can use them without importing each
//! other.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use clap::Args;

use super::LimitArgs;
use super::client::ServerArgs;
use crate::ModuleHash;
use crate::server::types::{BackoffRequest, HumanCount, HumanDuration, HumanSize, SubmitTask};
use crate::units::parse_duration;

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
    pub(crate) input: Option<PathBuf>,
    /// A batch: one task per line of this JSON Lines file (`-` for stdin);
    /// each line is one task's input. Sent 500 lines per request to
    /// `POST /v1/tasks:batch`. Results are written as JSON lines, each
    /// with its line in the file (blank lines skipped, but counted).
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
    pub(crate) priority: Option<i32>,
    #[command(flatten)]
    pub(crate) limits: LimitArgs,
    /// Module run settings (kept with the module; for now only when no
    /// server answers and the data directory is used directly).
    #[command(flatten)]
    pub(crate) settings: super::settings::SettingsArgs,
    /// How many times the task may run in all (1 = no retry). A run lost
    /// with its host is not an attempt.
    #[arg(long)]
    pub(crate) attempts: Option<u32>,
    /// How many runs may be lost with their host (a crash, a lost lease)
    /// before the task ends `interrupted` (default 3).
    #[arg(long, value_name = "N")]
    pub(crate) max_interruptions: Option<u32>,
    /// The wait before the first retry, e.g. `1s` (it doubles each time).
    #[arg(long, value_parser = parse_duration)]
    pub(crate) backoff: Option<Duration>,
    /// Start no sooner than this from now, e.g. `10m`.
    #[arg(long, value_parser = parse_duration)]
    pub(crate) delay: Option<Duration>,
    /// Expire (never start) if not started within this, e.g. `1h`.
    #[arg(long, value_parser = parse_duration)]
    pub(crate) expire_after: Option<Duration>,
    /// An idempotency key: submitting again with it returns the first task.
    #[arg(long, value_name = "KEY")]
    pub(crate) key: Option<String>,
    /// A label `key=value`; repeat for several.
    #[arg(long = "label", value_name = "K=V", value_parser = parse_label)]
    pub(crate) labels: Vec<(String, String)>,
    /// While the server refuses for backpressure (429: the queue is full;
    /// 503: busy, or its store unavailable), keep retrying with backoff
    /// (50 ms doubling to 5 s) for this long, then give up with exit 7.
    /// `0s` gives up at the first refusal.
    #[arg(long, value_parser = parse_duration, default_value = "5m", value_name = "DURATION")]
    pub(crate) retry_for: Duration,
    /// Requests in flight at once for a batch (each a chunk of up to 500
    /// lines), and results waited for at once with `--wait`.
    #[arg(long, default_value_t = 8)]
    pub(crate) concurrency: usize,
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

/// Lines per `POST /v1/tasks:batch` request (and per store write on the
/// embedded path).
pub(crate) const CHUNK_LINES: usize = 500;

/// One input of a batch, with its line in the file.
#[derive(Clone, Debug)]
pub(crate) struct InputLine {
    /// Its line, from 1; blank lines are counted, though skipped.
    pub(crate) line: usize,
    /// The input's bytes (the line, trimmed).
    pub(crate) input: Vec<u8>,
}

/// The inputs of a batch: each line that is not blank, checked to be JSON,
/// with its line number in the file (blank lines counted).
pub(crate) fn read_lines(path: &Path) -> anyhow::Result<Vec<InputLine>> {
    let reader: Box<dyn BufRead> = if path.as_os_str() == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(path)
                .with_context(|| format!("cannot read the inputs {}", path.display()))?,
        ))
    };
    parse_lines(reader, &path.display().to_string())
}

/// [`read_lines`] from any reader; `name` names it in messages.
fn parse_lines(reader: impl BufRead, name: &str) -> anyhow::Result<Vec<InputLine>> {
    let mut inputs = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("cannot read the inputs {name}"))?;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        serde_json::from_str::<serde_json::Value>(line).with_context(|| {
            format!(
                "{name} line {}: not JSON (each line is one task's input)",
                n + 1
            )
        })?;
        inputs.push(InputLine {
            line: n + 1,
            input: line.as_bytes().to_vec(),
        });
    }
    if inputs.is_empty() {
        anyhow::bail!("{name} holds no inputs");
    }
    Ok(inputs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_numbers_count_blank_lines() {
        let text = "\n{\"n\":1}\n\n   \n2\r\n\n\"three\"\n";
        let lines = parse_lines(text.as_bytes(), "in.jsonl").unwrap();
        let numbers: Vec<usize> = lines.iter().map(|l| l.line).collect();
        assert_eq!(numbers, [2, 5, 7]);
        assert_eq!(lines[1].input, b"2");
        let error = parse_lines("1\n\nnope\n".as_bytes(), "in.jsonl").unwrap_err();
        assert!(
            format!("{error:#}").contains("in.jsonl line 3: not JSON"),
            "{error:#}"
        );
    }
}
