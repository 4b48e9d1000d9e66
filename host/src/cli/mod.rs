//! The `wpool` command line. Each subcommand is one module with a clap
//! struct and an `execute` function; this module only parses and
//! dispatches, and turns errors into messages and exit codes.

mod actions;
mod cancel;
mod client;
mod embedded;
mod list;
mod local;
mod modules;
mod print;
mod result;
mod run;
mod serve;
mod settings;
mod stats;
mod status;
mod submit;
mod submit_args;

use self::print::write_stdout;
use crate::server;

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit codes of the `wpool` command.
pub mod exit {
    /// Everything went well.
    pub const OK: u8 = 0;
    /// The task ran and failed (trap, timeout, non-zero exit, ...).
    pub const TASK_FAILED: u8 = 1;
    /// The command line was wrong (clap's own code).
    pub const USAGE: u8 = 2;
    /// The input was refused: invalid module, unreadable file, bad limit.
    pub const BAD_INPUT: u8 = 3;
    /// No server answered at `--server`.
    pub const UNREACHABLE: u8 = 4;
    /// No such task or module.
    pub const NOT_FOUND: u8 = 5;
    /// The task has not finished (yet): `result` without `--wait`, or a
    /// wait that ran out.
    pub const NOT_FINISHED: u8 = 6;
    /// The server refused for a reason that is not the input's: a missing
    /// or wrong token, a full queue, a shutdown, a conflict.
    pub const REFUSED: u8 = 7;
    /// Something failed inside wpool itself.
    pub const INTERNAL: u8 = 70;
}

/// Run WebAssembly tasks on a pool of wasmtime instances, with limits that
/// really kill runaway tasks.
#[derive(Debug, Parser)]
#[command(name = "wpool", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How log lines (on stderr) are written: `text`, or `json` (one object
    /// per line, for log collectors). Levels are set with `WPOOL_LOG`:
    /// `debug`, `info`, `warn` (wpool's own logs; dependencies stay at
    /// warn), or a full filter such as `wpool=debug,sled=info`.
    #[arg(
        long,
        global = true,
        env = "WPOOL_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
}

/// See `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    Serve(Box<serve::ServeArgs>),
    Submit(Box<submit_args::SubmitArgs>),
    Status(status::StatusArgs),
    Result(result::ResultArgs),
    Cancel(cancel::CancelArgs),
    List(list::ListArgs),
    Stats(stats::StatsArgs),
    Modules(modules::ModulesArgs),
    Run(run::RunArgs),
    Retry(actions::RetryArgs),
    Delete(actions::DeleteArgs),
    Purge(actions::PurgeArgs),
    Pause(actions::PauseArgs),
    Resume(actions::ResumeArgs),
    Workers(actions::WorkersArgs),
    Events(actions::EventsArgs),
    Completions(CompletionsArgs),
    Man(ManArgs),
}

/// Print a completion script for a shell.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  wpool completions bash > /etc/bash_completion.d/wpool\n  wpool completions zsh > \"${fpath[1]}/_wpool\""
)]
struct CompletionsArgs {
    /// The shell.
    shell: clap_complete::Shell,
}

/// Print the manual page (roff), generated from these definitions.
#[derive(Debug, clap::Args)]
#[command(after_help = "Example:\n  wpool man > wpool.1 && man ./wpool.1")]
struct ManArgs {}

/// The per-task limit flags, shared by `run` and `submit`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct LimitArgs {
    /// Wall-clock timeout of each attempt, e.g. `500ms`, `5s`, `2m`.
    /// Default: 30s.
    #[arg(long, value_parser = crate::units::parse_duration)]
    pub(crate) timeout: Option<std::time::Duration>,
    /// Fuel budget, e.g. `1000000` or `10M`. Default: unlimited.
    #[arg(long, value_parser = crate::units::parse_count)]
    pub(crate) fuel: Option<u64>,
    /// Memory limit, e.g. `64MiB`. Default: 128MiB.
    #[arg(long, value_parser = crate::units::parse_size)]
    pub(crate) memory: Option<u64>,
    /// Output size limit, e.g. `1MiB`. Default: 16MiB.
    #[arg(long, value_parser = crate::units::parse_size)]
    pub(crate) max_output: Option<u64>,
    /// How much of the log is kept, e.g. `16KiB`. Default and most: 64KiB.
    #[arg(long, value_parser = crate::units::parse_size)]
    pub(crate) max_log: Option<u64>,
}

impl LimitArgs {
    /// The flags as overrides of the pool's default limits.
    pub(crate) fn overrides(&self) -> crate::LimitOverrides {
        crate::LimitOverrides {
            timeout: self.timeout,
            fuel: self.fuel,
            memory: self.memory,
            max_output: self.max_output,
            max_log: self.max_log,
        }
    }
}

/// An error of a subcommand, with the exit code it maps to.
#[derive(Debug)]
pub(crate) struct Failure {
    code: u8,
    error: anyhow::Error,
}

impl Failure {
    pub(crate) fn new(code: u8, error: impl Into<anyhow::Error>) -> Self {
        Self {
            code,
            error: error.into(),
        }
    }

    /// The same failure, with `context` before its message.
    pub(crate) fn context(self, context: impl std::fmt::Display + Send + Sync + 'static) -> Self {
        Self {
            code: self.code,
            error: self.error.context(context),
        }
    }

    pub(crate) fn bad_input(error: impl Into<anyhow::Error>) -> Self {
        Self {
            code: exit::BAD_INPUT,
            error: error.into(),
        }
    }

    pub(crate) fn internal(error: impl Into<anyhow::Error>) -> Self {
        Self {
            code: exit::INTERNAL,
            error: error.into(),
        }
    }
}

/// Parses the command line, runs the subcommand, and maps the result to an
/// exit code. Errors print as `wpool: <what happened>: <cause>`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The daemon logs each task's transitions and each request at info;
    // the other commands only warnings.
    let default_level = match cli.command {
        Command::Serve(_) => "info",
        _ => "warn",
    };
    init_tracing(cli.log_format, default_level);
    let result = match cli.command {
        Command::Serve(args) => serve::execute(*args),
        Command::Submit(args) => submit::execute(*args),
        Command::Status(args) => status::execute(args),
        Command::Result(args) => result::execute(args),
        Command::Cancel(args) => cancel::execute(args),
        Command::List(args) => list::execute(args),
        Command::Stats(args) => stats::execute(args),
        Command::Modules(args) => modules::execute(args),
        Command::Run(args) => run::execute(args),
        Command::Retry(args) => actions::retry(args),
        Command::Delete(args) => actions::delete(args),
        Command::Purge(args) => actions::purge(args),
        Command::Pause(args) => actions::pause(args),
        Command::Resume(args) => actions::resume(args),
        Command::Workers(args) => actions::workers(args),
        Command::Events(args) => actions::events(args),
        Command::Completions(args) => {
            use clap::CommandFactory as _;
            // Into a buffer: the generator panics on a closed pipe.
            let mut script = Vec::new();
            clap_complete::generate(args.shell, &mut Cli::command(), "wpool", &mut script);
            write_stdout(&script).map(|()| exit::OK)
        }
        Command::Man(ManArgs {}) => {
            use clap::CommandFactory as _;
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .render(&mut page)
                .map_err(Failure::internal)
                .and_then(|()| write_stdout(&page))
                .map(|()| exit::OK)
        }
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            let mut stderr = std::io::stderr().lock();
            let _ = writeln!(stderr, "wpool: {:#}", failure.error);
            ExitCode::from(failure.code)
        }
    }
}

/// Logs go to stderr, filtered by `WPOOL_LOG` (or `RUST_LOG`). A bare
/// level (`debug`) applies to wpool only, dependencies staying at warn
/// (cranelift alone writes thousands of debug lines per module); a full
/// filter (`wpool=debug,sled=info`) is taken as written. Colours only on
/// a terminal.
fn init_tracing(format: LogFormat, default_level: &str) {
    use std::io::IsTerminal as _;
    use tracing_subscriber::EnvFilter;
    let given = std::env::var("WPOOL_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .filter(|f| !f.trim().is_empty());
    let filter = match given {
        Some(f) if f.contains('=') || f.contains(',') => f,
        Some(level) => format!("warn,wpool={level}"),
        None => format!("warn,wpool={default_level}"),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
}

/// Reads a task's input: a file, `-` for stdin, or, with no `--input`,
/// stdin when it is piped (not a terminal), else nothing.
pub(crate) fn read_input(path: Option<&std::path::Path>) -> anyhow::Result<Vec<u8>> {
    use anyhow::Context as _;
    use std::io::{IsTerminal as _, Read as _};
    match path {
        None if !std::io::stdin().is_terminal() => {
            let mut input = Vec::new();
            std::io::stdin()
                .read_to_end(&mut input)
                .context("cannot read the input from stdin")?;
            Ok(input)
        }
        None => Ok(Vec::new()),
        Some(p) if p.as_os_str() == "-" => {
            let mut input = Vec::new();
            std::io::stdin()
                .read_to_end(&mut input)
                .context("cannot read the input from stdin")?;
            Ok(input)
        }
        Some(p) => {
            std::fs::read(p).with_context(|| format!("cannot read the input {}", p.display()))
        }
    }
}
