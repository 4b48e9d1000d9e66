//! `wpool stats`.

use clap::Args;

use super::client::{Client, ServerArgs};
use super::print::print_json;
use super::server::types::StatsView;
use super::{Failure, exit, write_stdout};

/// Show counts per state, workers and throughput.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  wpool stats --server http://127.0.0.1:7878")]
pub(crate) struct StatsArgs {
    #[command(flatten)]
    server: ServerArgs,
}

pub(crate) fn execute(args: StatsArgs) -> Result<u8, Failure> {
    let client = Client::new(&args.server);
    let stats: StatsView = client
        .get("/v1/stats")
        .and_then(|a| a.json())
        .map_err(|e| e.into_failure(client.base()))?;
    if args.server.json {
        print_json(&stats)?;
        return Ok(exit::OK);
    }
    let mut text = String::new();
    for state in crate::TaskState::ALL {
        let n = stats.counts.get(state.as_str()).copied().unwrap_or(0);
        text.push_str(&format!("{:<10} {n:>10}\n", state.as_str()));
    }
    text.push_str(&format!("{:<10} {:>10}\n", "total", stats.total));
    text.push_str(&format!(
        "workers    {} ({} busy, {} idle)\nthroughput {:.1} tasks/s\nuptime     {:.0}s\nversion    {}\n",
        stats.workers, stats.busy, stats.idle, stats.finished_per_sec, stats.uptime_secs, stats.version
    ));
    write_stdout(text.as_bytes())?;
    Ok(exit::OK)
}
