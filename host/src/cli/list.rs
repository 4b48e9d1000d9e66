//! `wpool list`.

use clap::Args;

use super::client::{Client, ServerArgs};
use super::print::print_json;
use super::server::types::TaskList;
use super::{Failure, exit, write_stdout};

/// List tasks, newest first.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  wpool list --state failed --label team=search\n  wpool list --limit 20 --json"
)]
pub(crate) struct ListArgs {
    /// Only tasks in this state (queued, scheduled, running, succeeded,
    /// failed, cancelled, expired).
    #[arg(long)]
    state: Option<String>,
    /// Only tasks with this label `key=value`; repeat for several.
    #[arg(long = "label", value_name = "K=V")]
    labels: Vec<String>,
    /// At most this many.
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Start after this task (the `next_cursor` of a previous page).
    #[arg(long)]
    cursor: Option<String>,
    #[command(flatten)]
    server: ServerArgs,
}

fn encode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub(crate) fn execute(args: ListArgs) -> Result<u8, Failure> {
    let client = Client::new(&args.server);
    let mut query = vec![format!("limit={}", args.limit)];
    if let Some(state) = &args.state {
        query.push(format!("state={}", encode(state)));
    }
    for label in &args.labels {
        query.push(format!("label={}", encode(label)));
    }
    if let Some(cursor) = &args.cursor {
        query.push(format!("cursor={}", encode(cursor)));
    }
    let list: TaskList = client
        .get(&format!("/v1/tasks?{}", query.join("&")))
        .and_then(|a| a.json())
        .map_err(|e| e.into_failure(client.base()))?;
    if args.server.json {
        print_json(&list)?;
        return Ok(exit::OK);
    }
    let mut text = format!(
        "{:<26}  {:<10}  {:>8}  {:<16}  {}\n",
        "ID", "STATE", "ATTEMPTS", "MODULE", "LABELS"
    );
    for t in &list.tasks {
        let labels: Vec<String> = t.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        text.push_str(&format!(
            "{:<26}  {:<10}  {:>8}  {:<16}  {}\n",
            t.id,
            t.state,
            t.attempts,
            &t.module[..t.module.len().min(16)],
            labels.join(",")
        ));
    }
    if let Some(cursor) = &list.next_cursor {
        text.push_str(&format!("more: wpool list --cursor {cursor}\n"));
    }
    write_stdout(text.as_bytes())?;
    Ok(exit::OK)
}
