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
    /// Read this data directory directly instead of asking a daemon (for
    /// tasks queued there while no server answered).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<std::path::PathBuf>,
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
    let list: TaskList = match &args.data_dir {
        Some(dir) => super::local::list(dir, &local_filter(&args)?)?,
        None => client
            .get(&format!("/v1/tasks?{}", query.join("&")))
            .and_then(|a| a.json())
            .map_err(|e| e.into_failure(client.base()))?,
    };
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
    write_stdout(text.as_bytes())?;
    if let Some(cursor) = &list.next_cursor {
        // The same filters, on stderr: stdout stays the table.
        let mut next = vec!["wpool list".to_string()];
        if let Some(state) = &args.state {
            next.push(format!("--state {state}"));
        }
        for label in &args.labels {
            next.push(format!("--label {label}"));
        }
        next.push(format!("--limit {}", args.limit));
        if let Some(dir) = &args.data_dir {
            next.push(format!("--data-dir {}", dir.display()));
        }
        next.push(format!("--cursor {cursor}"));
        eprintln!("wpool: more: {}", next.join(" "));
    }
    Ok(exit::OK)
}

/// The filters of `args`, for a data directory read directly.
fn local_filter(args: &ListArgs) -> Result<crate::store::TaskFilter, Failure> {
    let mut filter = crate::store::TaskFilter {
        limit: args.limit,
        ..Default::default()
    };
    if let Some(state) = &args.state {
        filter.state = Some(
            state
                .parse()
                .map_err(|e: crate::Error| Failure::bad_input(anyhow::anyhow!("{e}")))?,
        );
    }
    for label in &args.labels {
        let (k, v) = label.split_once('=').ok_or_else(|| {
            Failure::bad_input(anyhow::anyhow!("label `{label}` must be written key=value"))
        })?;
        filter.labels.insert(k.to_string(), v.to_string());
    }
    if let Some(cursor) = &args.cursor {
        filter.before = Some(
            cursor
                .parse()
                .map_err(|e: crate::Error| Failure::bad_input(anyhow::anyhow!("{e}")))?,
        );
    }
    Ok(filter)
}
