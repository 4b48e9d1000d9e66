//! `wpool cancel ID`.

use clap::Args;

use super::client::{Client, ServerArgs};
use super::print::print_json;
use super::server::types::CancelAnswer;
use super::{Failure, exit};

/// Cancel a task: a waiting one never runs, a running one is killed.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  wpool cancel 01J9ZK3V6Q8R2T4W5X7Y9A0B1C")]
pub(crate) struct CancelArgs {
    /// The task's id.
    id: String,
    #[command(flatten)]
    server: ServerArgs,
}

pub(crate) fn execute(args: CancelArgs) -> Result<u8, Failure> {
    let client = Client::new(&args.server);
    let answer: CancelAnswer = client
        .delete(&format!("/v1/tasks/{}", args.id))
        .and_then(|a| a.json())
        .map_err(|e| e.into_failure(client.base()))?;
    if args.server.json {
        print_json(&answer)?;
    } else {
        let what = match answer.cancel.as_str() {
            "killed" => "was running and is killed",
            _ => "was waiting and will never run",
        };
        eprintln!("wpool: task {} {what}", answer.id);
    }
    Ok(exit::OK)
}
