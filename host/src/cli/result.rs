//! `wpool result ID [--wait]`: a task's output.

use std::time::{Duration, Instant};

use anyhow::anyhow;
use clap::Args;

use super::client::{Client, ServerArgs};
use super::print::print_result;
use super::server::types::ResultView;
use super::submit::wait_with_spinner;
use super::{Failure, exit};
use crate::units::parse_duration;

/// Print a task's output (stdout) and outcome (stderr). Exit 0 when it
/// succeeded, 1 when it failed, 6 when it has not finished.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  wpool result 01J9ZK3V6Q8R2T4W5X7Y9A0B1C --wait\n  wpool result 01J9ZK3V6Q8R2T4W5X7Y9A0B1C --json"
)]
pub(crate) struct ResultArgs {
    /// The task's id.
    id: String,
    /// Wait until the task finishes.
    #[arg(short, long)]
    wait: bool,
    /// Give up waiting after this long, e.g. `10m`.
    #[arg(long, value_parser = parse_duration, requires = "wait")]
    wait_timeout: Option<Duration>,
    /// Read this data directory directly instead of asking a daemon (for
    /// tasks queued there while no server answered; no --wait: nothing
    /// runs them but a daemon, or `submit --wait`).
    #[arg(long, value_name = "DIR", conflicts_with = "wait")]
    data_dir: Option<std::path::PathBuf>,
    #[command(flatten)]
    server: ServerArgs,
}

pub(crate) fn execute(args: ResultArgs) -> Result<u8, Failure> {
    let client = Client::new(&args.server);
    let result = if let Some(dir) = &args.data_dir {
        super::local::result(dir, &args.id)?
    } else if args.wait {
        let deadline = args.wait_timeout.map(|d| Instant::now() + d);
        wait_with_spinner(&client, &args.id, deadline)?
    } else {
        let answer = client
            .get(&format!("/v1/tasks/{}/result", args.id))
            .map_err(|e| e.into_failure(client.base()))?;
        if answer.status == 200 {
            Some(
                answer
                    .json::<ResultView>()
                    .map_err(|e| e.into_failure(client.base()))?,
            )
        } else {
            None
        }
    };
    match result {
        Some(result) => print_result(&result, args.server.json, Some(&client)),
        None => Err(Failure::new(
            exit::NOT_FINISHED,
            anyhow!(
                "task {} has not finished; `wpool result {} --wait` waits for it",
                args.id,
                args.id
            ),
        )),
    }
}
