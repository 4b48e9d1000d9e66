//! `wpool modules`.

use clap::Args;

use super::client::{Client, ServerArgs};
use super::server::types::ModuleList;
use super::submit::print_json;
use super::{Failure, exit, write_stdout};
use crate::units::format_size;

/// List the modules stored on the server.
#[derive(Debug, Args)]
pub(crate) struct ModulesArgs {
    #[command(flatten)]
    server: ServerArgs,
}

pub(crate) fn execute(args: ModulesArgs) -> Result<u8, Failure> {
    let client = Client::new(&args.server);
    let list: ModuleList = client
        .get("/v1/modules")
        .and_then(|a| a.json())
        .map_err(|e| e.into_failure(client.base()))?;
    if args.server.json {
        print_json(&list)?;
        return Ok(exit::OK);
    }
    let mut text = format!("{:<64}  {:>10}\n", "HASH", "SIZE");
    for m in &list.modules {
        text.push_str(&format!("{:<64}  {:>10}\n", m.hash, format_size(m.size)));
    }
    write_stdout(text.as_bytes())?;
    Ok(exit::OK)
}
