//! The operator's everyday actions on a running daemon: `wpool retry`,
//! `delete`, `purge`, `pause`, `resume`, `workers` and `events`.

use anyhow::anyhow;
use clap::Args;

use super::client::{Client, ServerArgs};
use super::print::print_json;
use super::server::types::{PurgeView, QueueView, TaskAnswer, WorkersView};
use super::{Failure, exit, write_stdout};

/// Run a finished task again, as a new task (a copy; the original stays
/// as it ended). Prints the new task's id.
///
/// Example: `wpool retry 01J9ZK3V6Q8R2T4W5X7Y9A0B1C --server http://host:7878`
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  wpool retry 01J9ZK3V6Q8R2T4W5X7Y9A0B1C")]
pub(crate) struct RetryArgs {
    /// The finished task's id.
    id: String,
    #[command(flatten)]
    server: ServerArgs,
}

pub(crate) fn retry(args: RetryArgs) -> Result<u8, Failure> {
    let client = Client::new(&args.server);
    let answer: TaskAnswer = client
        .post_json(
            &format!("/v1/tasks/{}/retry", args.id),
            &serde_json::json!({}),
        )
        .and_then(|a| a.json())
        .map_err(|e| e.into_failure(client.base()))?;
    if args.server.json {
        print_json(&answer)?;
    } else {
        write_stdout(format!("{}\n", answer.task.id).as_bytes())?;
        eprintln!(
            "wpool: task {} runs again as {}; `wpool result {} --wait` waits for it",
            args.id, answer.task.id, answer.task.id
        );
    }
    Ok(exit::OK)
}

/// Delete finished tasks, with their results and stored inputs and
/// outputs. A task not finished is refused (cancel it first).
#[derive(Debug, Args)]
#[command(
    after_help = "Example:\n  wpool delete 01J9ZK3V6Q8R2T4W5X7Y9A0B1C 01J9ZK4A2B3C4D5E6F7G8H9J0K"
)]
pub(crate) struct DeleteArgs {
    /// The tasks' ids.
    #[arg(required = true)]
    ids: Vec<String>,
    #[command(flatten)]
    server: ServerArgs,
}

pub(crate) fn delete(args: DeleteArgs) -> Result<u8, Failure> {
    let client = Client::new(&args.server);
    for id in &args.ids {
        client
            .post_json(&format!("/v1/tasks/{id}/delete"), &serde_json::json!({}))
            .map_err(|e| e.into_failure(client.base()).context(format!("task {id}")))?;
        eprintln!("wpool: task {id} deleted");
    }
    Ok(exit::OK)
}

/// Delete every finished task matching the filters (all finished tasks
/// when none is given), with their results and stored payloads.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  wpool purge --state failed --label team=search\n  wpool purge --yes"
)]
pub(crate) struct PurgeArgs {
    /// Only tasks in this final state: succeeded, failed, cancelled or
    /// expired.
    #[arg(long)]
    state: Option<String>,
    /// Only tasks with this label, `key=value`; repeat for several.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = super::submit_args::parse_label)]
    labels: Vec<(String, String)>,
    /// Needed to purge every finished task (no --state and no --label).
    #[arg(long)]
    yes: bool,
    #[command(flatten)]
    server: ServerArgs,
}

pub(crate) fn purge(args: PurgeArgs) -> Result<u8, Failure> {
    if args.state.is_none() && args.labels.is_empty() && !args.yes {
        return Err(Failure::bad_input(anyhow!(
            "this would delete every finished task: give --state or --label to choose, or \
             --yes to confirm"
        )));
    }
    let client = Client::new(&args.server);
    let body = serde_json::json!({
        "state": args.state,
        "labels": args.labels.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
    });
    let answer: PurgeView = client
        .post_json("/v1/tasks:purge", &body)
        .and_then(|a| a.json())
        .map_err(|e| e.into_failure(client.base()))?;
    if args.server.json {
        print_json(&answer)?;
    } else {
        eprintln!("wpool: {} finished task(s) deleted", answer.deleted);
    }
    Ok(exit::OK)
}

/// Pause the queue: no task starts until `wpool resume`; running tasks
/// finish, and submissions are still taken.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  wpool pause && wpool resume")]
pub(crate) struct PauseArgs {
    #[command(flatten)]
    server: ServerArgs,
}

pub(crate) fn pause(args: PauseArgs) -> Result<u8, Failure> {
    queue(&args.server, "pause")
}

/// Resume a paused queue.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  wpool resume --server http://host:7878")]
pub(crate) struct ResumeArgs {
    #[command(flatten)]
    server: ServerArgs,
}

pub(crate) fn resume(args: ResumeArgs) -> Result<u8, Failure> {
    queue(&args.server, "resume")
}

fn queue(server: &ServerArgs, action: &str) -> Result<u8, Failure> {
    let client = Client::new(server);
    let answer: QueueView = client
        .post_json(&format!("/v1/queue/{action}"), &serde_json::json!({}))
        .and_then(|a| a.json())
        .map_err(|e| e.into_failure(client.base()))?;
    if server.json {
        print_json(&answer)?;
    } else if answer.paused {
        eprintln!("wpool: the queue is paused: no task starts until `wpool resume`");
    } else {
        eprintln!("wpool: the queue runs");
    }
    Ok(exit::OK)
}

/// Show, or change, how many tasks the daemon runs at once (up to its
/// `--max-workers`).
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  wpool workers        # how many now\n  wpool workers 8      # run 8 at once"
)]
pub(crate) struct WorkersArgs {
    /// The new count; without it, the current one is shown.
    count: Option<usize>,
    #[command(flatten)]
    server: ServerArgs,
}

pub(crate) fn workers(args: WorkersArgs) -> Result<u8, Failure> {
    let client = Client::new(&args.server);
    let Some(count) = args.count else {
        let stats: super::server::types::StatsView = client
            .get("/v1/stats")
            .and_then(|a| a.json())
            .map_err(|e| e.into_failure(client.base()))?;
        if args.server.json {
            print_json(&serde_json::json!({"workers": stats.workers, "busy": stats.busy}))?;
        } else {
            write_stdout(format!("{}\n", stats.workers).as_bytes())?;
            eprintln!("wpool: {} busy, {} idle", stats.busy, stats.idle);
        }
        return Ok(exit::OK);
    };
    let answer: WorkersView = client
        .put_json("/v1/workers", &serde_json::json!({"workers": count}))
        .and_then(|a| a.json())
        .map_err(|e| e.into_failure(client.base()))?;
    if args.server.json {
        print_json(&answer)?;
    } else {
        eprintln!(
            "wpool: {} worker(s) now (at most {})",
            answer.workers, answer.max_workers
        );
    }
    Ok(exit::OK)
}

/// Follow the daemon's events as they happen: submitted, started,
/// progress, retrying, succeeded, failed, cancelled, expired, requeued,
/// interrupted. Runs until interrupted (Ctrl-C).
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  wpool events\n  wpool events --task 01J9ZK3V6Q8R2T4W5X7Y9A0B1C --json"
)]
pub(crate) struct EventsArgs {
    /// Only this task's events.
    #[arg(long)]
    task: Option<String>,
    #[command(flatten)]
    server: ServerArgs,
}

pub(crate) fn events(args: EventsArgs) -> Result<u8, Failure> {
    let client = Client::new(&args.server);
    let path = match &args.task {
        Some(id) => format!("/v1/events?task={id}"),
        None => "/v1/events".to_string(),
    };
    let mut failed = None;
    client
        .stream_lines(&path, |line| {
            let Some(data) = line.strip_prefix("data:") else {
                return true;
            };
            let data = data.trim();
            let text = if args.server.json {
                format!("{data}\n")
            } else {
                match serde_json::from_str::<serde_json::Value>(data) {
                    Ok(event) => describe_event(&event),
                    Err(_) => format!("{data}\n"),
                }
            };
            match write_stdout(text.as_bytes()) {
                Ok(()) => true,
                Err(e) => {
                    failed = Some(e);
                    false
                }
            }
        })
        .map_err(|e| e.into_failure(client.base()))?;
    match failed {
        Some(failure) => Err(failure),
        None => Ok(exit::OK),
    }
}

/// One event as a line: when, which task, what.
fn describe_event(event: &serde_json::Value) -> String {
    let kind = event["event"].as_str().unwrap_or("event");
    let id = event["id"].as_str().unwrap_or("-");
    let at = event["at"].as_u64().map_or_else(String::new, |ms| {
        let secs = ms / 1000;
        format!(
            "{:02}:{:02}:{:02}.{:03} ",
            (secs / 3600) % 24,
            (secs / 60) % 60,
            secs % 60,
            ms % 1000
        )
    });
    let detail = match kind {
        "progress" => format!(
            " {}/{}",
            event["done"].as_u64().unwrap_or(0),
            event["total"].as_u64().unwrap_or(0)
        ),
        "started" | "retrying" => event["attempt"]
            .as_u64()
            .map_or_else(String::new, |a| format!(" attempt {a}")),
        "failed" => event["outcome"]["kind"]
            .as_str()
            .map_or_else(String::new, |o| format!(" ({o})")),
        "lagged" => format!(" ({} events missed)", event["missed"].as_u64().unwrap_or(0)),
        _ => String::new(),
    };
    format!("{at}{id} {kind}{detail}\n")
}
