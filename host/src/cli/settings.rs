//! The module run-settings flags of `run` and `submit` (see
//! [`ModuleSettings`](crate::ModuleSettings)), and the operator's
//! directory grants of `run`.

use std::path::PathBuf;

use crate::units::parse_size;
use crate::{ModuleSettings, ReadOnlyDir};

/// How the module's tasks run: given when the module is registered, kept
/// with it.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct SettingsArgs {
    /// The module's name: its tasks' `argv[0]` (default: `task`), and the
    /// name an operator's directory grant can name.
    #[arg(long, value_name = "NAME")]
    pub(crate) name: Option<String>,
    /// A fixed argument after `argv[0]`; repeat for several, in order
    /// (`--arg main.py --arg=-v`).
    #[arg(long = "arg", value_name = "ARG", allow_hyphen_values = true)]
    pub(crate) args: Vec<String>,
    /// An environment variable for the module's tasks, `KEY=VALUE`; repeat
    /// for several.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub(crate) env: Vec<(String, String)>,
    /// An exit code that means success besides 0 (a SAT solver's 10 and
    /// 20); repeat for several.
    #[arg(long = "success-code", value_name = "CODE")]
    pub(crate) success_codes: Vec<u32>,
    /// A writable scratch directory at `/tmp` for each task, empty at start
    /// and removed at its end, of at most this size, e.g. `16MiB`
    /// (wasm32-wasip1 commands only).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub(crate) scratch: Option<u64>,
    /// Also give the input as the file `/tmp/input` in the scratch
    /// directory (needs --scratch).
    #[arg(long, requires = "scratch")]
    pub(crate) input_file: bool,
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("`{text}` is not an environment variable: write KEY=VALUE"))
}

impl SettingsArgs {
    /// Whether any settings flag was given.
    pub(crate) fn given(&self) -> bool {
        self.name.is_some()
            || !self.args.is_empty()
            || !self.env.is_empty()
            || !self.success_codes.is_empty()
            || self.scratch.is_some()
            || self.input_file
    }

    /// The settings the flags describe.
    pub(crate) fn settings(&self) -> ModuleSettings {
        ModuleSettings {
            name: self.name.clone(),
            args: self.args.clone(),
            env: self.env.iter().cloned().collect(),
            success_codes: self.success_codes.iter().copied().collect(),
            scratch: self.scratch,
            input_file: self.input_file,
        }
    }
}

/// `HOST:GUEST`: a host directory granted read-only at a guest path.
pub(crate) fn parse_read_only(text: &str) -> Result<ReadOnlyDir, String> {
    let (host, guest) = text.rsplit_once(':').ok_or_else(|| {
        format!("`{text}` is not a directory grant: write HOST_DIR:GUEST_PATH (`./lib:/lib`)")
    })?;
    if host.is_empty() || guest.is_empty() {
        return Err(format!(
            "`{text}` is not a directory grant: write HOST_DIR:GUEST_PATH (`./lib:/lib`)"
        ));
    }
    Ok(ReadOnlyDir::new(PathBuf::from(host), guest))
}
