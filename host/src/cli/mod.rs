//! The `wpool` command line. Each subcommand is one module with a clap
//! struct and an `execute` function; this module only parses and
//! dispatches, and turns errors into messages and exit codes.

mod run;

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
}

#[derive(Debug, Subcommand)]
enum Command {
    Run(run::RunArgs),
}

/// An error of a subcommand, with the exit code it maps to.
#[derive(Debug)]
pub(crate) struct Failure {
    code: u8,
    error: anyhow::Error,
}

impl Failure {
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
    init_tracing();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run::execute(args),
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

/// Logs go to stderr, filtered by `WPOOL_LOG` (or `RUST_LOG`); quiet
/// (warnings only) by default.
fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("WPOOL_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
}

/// Writes to stdout, treating a closed pipe (`wpool ... | head`) as success.
pub(crate) fn write_stdout(bytes: &[u8]) -> Result<(), Failure> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Failure::internal(
            anyhow::Error::new(e).context("writing to stdout"),
        )),
    }
}
