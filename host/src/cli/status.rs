//! `wpool status ID`: a task's state.

use clap::Args;

use super::client::{Client, ServerArgs};
use super::print::print_json;
use super::server::types::TaskAnswer;
use super::{Failure, exit, write_stdout};
use crate::units::format_duration;
use std::time::Duration;

/// Show a task's state, attempts and outcome.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  wpool status 01J9ZK3V6Q8R2T4W5X7Y9A0B1C")]
pub(crate) struct StatusArgs {
    /// The task's id.
    id: String,
    /// Read this data directory directly instead of asking a daemon (for
    /// tasks queued there while no server answered).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<std::path::PathBuf>,
    #[command(flatten)]
    server: ServerArgs,
}

pub(crate) fn execute(args: StatusArgs) -> Result<u8, Failure> {
    let answer: TaskAnswer = match &args.data_dir {
        Some(dir) => super::local::task(dir, &args.id)?,
        None => {
            let client = Client::new(&args.server);
            client
                .get(&format!("/v1/tasks/{}", args.id))
                .and_then(|a| a.json())
                .map_err(|e| e.into_failure(client.base()))?
        }
    };
    if args.server.json {
        print_json(&answer)?;
        return Ok(exit::OK);
    }
    let t = &answer.task;
    let mut text = format!(
        "id        {}\nstate     {}\nmodule    {}\npriority  {}\nattempts  {}/{}\n",
        t.id, t.state, t.module, t.priority, t.attempts, t.max_attempts
    );
    if t.interruptions > 0 {
        text.push_str(&format!(
            "interrupted {}/{} (runs lost with their host, run again)\n",
            t.interruptions, t.max_interruptions
        ));
    }
    if let Some(outcome) = &t.outcome {
        text.push_str(&format!("outcome   {}\n", outcome.message));
    }
    if let Some((done, total)) = t.progress {
        text.push_str(&format!("progress  {done}/{total}\n"));
    }
    if !t.labels.is_empty() {
        let labels: Vec<String> = t.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        text.push_str(&format!("labels    {}\n", labels.join(",")));
    }
    if let Some(key) = &t.idempotency_key {
        text.push_str(&format!("key       {key}\n"));
    }
    let now = crate::now_millis();
    let ago = |at: u64| format_duration(Duration::from_millis(now.saturating_sub(at)));
    text.push_str(&format!("submitted {} ago\n", ago(t.submitted_at)));
    if t.state == "scheduled" && t.run_at > now {
        text.push_str(&format!(
            "runs in   {}\n",
            format_duration(Duration::from_millis(t.run_at - now))
        ));
    }
    if let Some(at) = t.finished_at {
        text.push_str(&format!("finished  {} ago\n", ago(at)));
    }
    for attempt in &t.history {
        let how = match (&attempt.outcome, t.state.as_str()) {
            (Some(outcome), _) => format!(
                "{} in {}",
                outcome.message,
                format_duration(Duration::from_micros(attempt.duration_us))
            ),
            (None, "running") => format!("running for {}", ago(attempt.started_at)),
            (None, _) => "lost with its host".to_string(),
        };
        text.push_str(&format!("attempt {} {how}\n", attempt.number));
    }
    write_stdout(text.as_bytes())?;
    Ok(exit::OK)
}
