//! `wpool run`: run one task locally, no daemon, no data directory.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::settings::{SettingsArgs, parse_read_only};
use super::{Failure, LimitArgs, exit, read_input, write_stdout};
use crate::units::format_duration;
use crate::{EngineConfig, Executor, Job, Outcome};

/// Run one task locally and print its output.
///
/// The output goes to stdout; the outcome, fuel and time to stderr. The
/// exit code is 0 when the task succeeded, 1 when it failed.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  wpool run task.wasm --input data.json\n  wpool run solver.wasm --arg --smt2 --success-code 10 --input problem.smt2"
)]
pub(crate) struct RunArgs {
    /// The task: a WASI command module (.wasm) or a `wpool:task` component.
    module: PathBuf,
    /// The input: a file, or `-` for stdin. Default: no input.
    #[arg(short, long, value_name = "FILE")]
    input: Option<PathBuf>,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    settings: SettingsArgs,
    /// Grant a host directory to the task, read-only, at a guest path:
    /// `HOST_DIR:GUEST_PATH` (`./stdlib:/lib`); repeat for several.
    #[arg(long = "read-only", value_name = "HOST:GUEST", value_parser = parse_read_only)]
    read_only: Vec<crate::ReadOnlyDir>,
    /// Print the log (the task's stderr) after the run.
    #[arg(long)]
    log: bool,
    /// Print the whole report as JSON on stdout instead of the raw output.
    #[arg(long)]
    json: bool,
}

pub(crate) fn execute(args: RunArgs) -> Result<u8, Failure> {
    let bytes = std::fs::read(&args.module)
        .with_context(|| format!("cannot read the module {}", args.module.display()))
        .map_err(Failure::bad_input)?;
    let input = read_input(args.input.as_deref()).map_err(Failure::bad_input)?;

    let mut config = EngineConfig::new();
    config.workers(1);
    if let Some(memory) = args.limits.memory {
        if memory > EngineConfig::MAX_MEMORY {
            return Err(Failure::bad_input(anyhow::anyhow!(
                "--memory {} is more than the most any task can have ({}: all a 32-bit wasm \
                 memory can address, and the address space reserved for each)",
                crate::units::format_size(memory),
                crate::units::format_size(EngineConfig::MAX_MEMORY)
            )));
        }
        // Let the engine hold a memory as large as asked for.
        config.max_memory(memory.max(config.max_memory_bytes()));
    }
    for dir in &args.read_only {
        config.read_only_dir(dir.clone());
    }
    if let Some(scratch) = args.settings.scratch {
        // The one running this is the operator: allow the scratch size asked for.
        config.max_scratch(scratch);
    }
    let executor = Executor::new(&config).map_err(|e| match e {
        crate::Error::Config(_) => Failure::bad_input(e),
        e => Failure::internal(e),
    })?;
    let module = executor
        .register_with(&bytes, args.settings.settings())
        .with_context(|| format!("{}", args.module.display()))
        .map_err(Failure::bad_input)?;
    let limits = executor
        .limits(&args.limits.overrides())
        .map_err(Failure::bad_input)?;
    let report = executor
        .spawn(Job {
            module,
            input,
            limits,
            on_progress: None,
            env: Vec::new(),
        })
        .wait_blocking();

    if args.json {
        let mut json = serde_json::to_vec_pretty(&serde_json::json!({
            "outcome": report.outcome,
            "output": String::from_utf8_lossy(&report.output),
            "log": report.log,
            "fuel_consumed": report.fuel_consumed,
            "duration_us": u64::try_from(report.duration.as_micros()).unwrap_or(u64::MAX),
            "progress": report.progress,
        }))
        .map_err(Failure::internal)?;
        json.push(b'\n');
        write_stdout(&json)?;
    } else {
        write_stdout(&report.output)?;
        if args.log && !report.log.is_empty() {
            eprint!("{}", report.log);
            if !report.log.ends_with('\n') {
                eprintln!();
            }
        }
        let fuel = report
            .fuel_consumed
            .map(|f| format!(", fuel {f}"))
            .unwrap_or_default();
        eprintln!(
            "wpool: task {} in {}{fuel}",
            report.outcome,
            format_duration(report.duration)
        );
        if !report.outcome.is_success() && !args.log && !report.log.is_empty() {
            eprintln!("wpool: log tail:\n{}", tail_lines(&report.log, 10));
        }
    }
    Ok(match report.outcome {
        Outcome::Success => exit::OK,
        _ => exit::TASK_FAILED,
    })
}

fn tail_lines(text: &str, n: usize) -> &str {
    let trimmed = text.trim_end_matches('\n');
    let start = trimmed
        .rmatch_indices('\n')
        .nth(n - 1)
        .map_or(0, |(i, _)| i + 1);
    &trimmed[start..]
}
