//! `wpool modules`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::client::{CallError, Client, ServerArgs, is_local};
use super::print::print_json;
use super::server::types::{ModuleInfo, ModuleList};
use super::{Failure, exit, write_stdout};
use crate::ModuleSettings;
use crate::store::{SledOptions, SledStore, Store};
use crate::units::format_size;

/// List the modules stored on the server, or, with no server answering on
/// this machine, in the data directory (with their run settings).
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  wpool modules\n  wpool modules rm 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
)]
pub(crate) struct ModulesArgs {
    #[command(subcommand)]
    action: Option<ModulesAction>,
    #[command(flatten)]
    server: ServerArgs,
    /// The data directory read when no daemon is reachable.
    #[arg(
        long,
        env = "WPOOL_DATA_DIR",
        value_name = "DIR",
        default_value = "wpool-data"
    )]
    data_dir: PathBuf,
}

/// What to do with the modules, besides listing them.
#[derive(Debug, clap::Subcommand)]
enum ModulesAction {
    /// Delete a module from the daemon (refused while unfinished tasks use
    /// it).
    Rm {
        /// The module's hash (as `wpool modules` shows it).
        hash: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

pub(crate) fn execute(args: ModulesArgs) -> Result<u8, Failure> {
    if let Some(ModulesAction::Rm { hash, server }) = &args.action {
        let client = Client::new(server);
        client.delete(&format!("/v1/modules/{hash}")).map_err(|e| {
            e.into_failure(client.base())
                .context(format!("module {hash}"))
        })?;
        eprintln!("wpool: module {hash} deleted");
        return Ok(exit::OK);
    }
    let client = Client::new(&args.server);
    let list: ModuleList = match client.get("/v1/modules").and_then(|a| a.json()) {
        Ok(list) => list,
        Err(CallError::Unreachable(cause)) if !args.server.given() && is_local(client.base()) => {
            eprintln!(
                "wpool: no server at {} ({cause}); reading the data directory {}",
                client.base(),
                args.data_dir.display()
            );
            return local(&args);
        }
        Err(e) => return Err(e.into_failure(client.base())),
    };
    print(&list, args.server.json)
}

/// The list as JSON, or as a table with each module's name and settings.
fn print(list: &ModuleList, json: bool) -> Result<u8, Failure> {
    if json {
        print_json(list)?;
        return Ok(exit::OK);
    }
    let mut text = format!("{:<64}  {:>10}  {:<16}  SETTINGS\n", "HASH", "SIZE", "NAME");
    for m in &list.modules {
        text.push_str(&format!(
            "{:<64}  {:>10}  {:<16}  {}\n",
            m.hash,
            format_size(m.size),
            m.settings.name.as_deref().unwrap_or("-"),
            describe(&m.settings)
        ));
    }
    write_stdout(text.as_bytes())?;
    Ok(exit::OK)
}

/// The modules of the data directory, read directly.
fn local(args: &ModulesArgs) -> Result<u8, Failure> {
    if !args.data_dir.exists() {
        return Err(Failure::new(
            exit::UNREACHABLE,
            anyhow::anyhow!(
                "no server answers and there is no data directory {}; start `wpool serve`, or \
                 give --server or --data-dir",
                args.data_dir.display()
            ),
        ));
    }
    let store = SledStore::open(&args.data_dir, &SledOptions::new())
        .with_context(|| format!("cannot open the data directory {}", args.data_dir.display()))
        .map_err(|e| Failure::new(exit::REFUSED, e))?;
    let mut modules = Vec::new();
    for module in store.modules().map_err(Failure::internal)? {
        let settings = store
            .module_settings(&module.hash)
            .map_err(Failure::internal)?
            .unwrap_or_default();
        modules.push(ModuleInfo {
            hash: module.hash.to_string(),
            size: module.size,
            settings,
        });
    }
    print(&ModuleList { modules }, args.server.json)
}

/// The settings other than the name, in a line.
fn describe(settings: &ModuleSettings) -> String {
    let mut parts = Vec::new();
    if !settings.args.is_empty() {
        parts.push(format!("args {:?}", settings.args));
    }
    if !settings.env.is_empty() {
        let keys: Vec<&str> = settings.env.keys().map(String::as_str).collect();
        parts.push(format!("env {}", keys.join(",")));
    }
    if !settings.success_codes.is_empty() {
        let codes: Vec<String> = settings
            .success_codes
            .iter()
            .map(ToString::to_string)
            .collect();
        parts.push(format!("success 0,{}", codes.join(",")));
    }
    if let Some(bytes) = settings.scratch {
        parts.push(format!("scratch {}", format_size(bytes)));
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join("; ")
    }
}
