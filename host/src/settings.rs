//! Per-module run settings: what a program built for another host needs to
//! run as a task (a name for `argv[0]`, fixed arguments, environment
//! variables, the exit codes that mean success, a scratch directory).
//!
//! Settings are given when a module is registered
//! ([`Pool::register_with`](crate::Pool::register_with),
//! [`Executor::register_with`](crate::Executor::register_with)) and apply to
//! every task of that module. They grant nothing of the host (no host
//! directory, no host environment), so a submitter may set them; what the
//! host grants (read-only directories, the largest scratch directory) is
//! the operator's, in [`EngineConfig`](crate::EngineConfig).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The `argv[0]` of a task whose module has no name.
pub const DEFAULT_PROGRAM_NAME: &str = "task";

/// The most fixed arguments a module may have.
pub const MAX_ARGS: usize = 256;
/// The most environment variables a module may set.
pub const MAX_ENV: usize = 256;
/// The most bytes all of a module's arguments and environment variables may
/// take together.
pub const MAX_ARGS_ENV_BYTES: usize = 64 << 10;
/// The most success codes a module may list.
pub const MAX_SUCCESS_CODES: usize = 64;
/// The longest module name.
pub const MAX_NAME_LEN: usize = 64;

/// How the tasks of one module are run. The default is what a module
/// registered without settings gets: `argv` is `["task"]`, the environment
/// holds only `WPOOL_TASK_ID` and `WPOOL_ATTEMPT`, exit code 0 alone is
/// success, and there is no scratch directory.
///
/// ```
/// use wpool::ModuleSettings;
///
/// let settings = ModuleSettings::new()
///     .name("solver")
///     .arg("--smt2")
///     .env("LANG", "C.UTF-8")
///     .success_code(10)
///     .success_code(20);
/// settings.validate()?;
/// assert_eq!(settings.argv(), ["solver", "--smt2"]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct ModuleSettings {
    /// The module's name: `argv[0]` of its tasks (else
    /// [`DEFAULT_PROGRAM_NAME`]), shown in listings, and the name an
    /// operator's directory grant can name. 1 to 64 characters of ASCII
    /// letters, digits, `.`, `_`, `+` and `-`, starting with a letter or a
    /// digit.
    pub name: Option<String>,
    /// Arguments after `argv[0]`, the same for every task.
    pub args: Vec<String>,
    /// Environment variables, besides `WPOOL_TASK_ID` and `WPOOL_ATTEMPT`
    /// (names starting with `WPOOL_` are reserved).
    pub env: BTreeMap<String, String>,
    /// Exit codes that mean success besides 0 (a SAT solver's 10 and 20).
    /// A task exiting with one of them succeeds; the code is noted in its
    /// log.
    pub success_codes: BTreeSet<u32>,
    /// A writable scratch directory for each task, bounded to this many
    /// bytes (see [`EngineConfig::max_scratch`](crate::EngineConfig::max_scratch)
    /// for how the bound holds). `None`: no scratch directory.
    pub scratch: Option<u64>,
    /// Also gives the task its input as the file `/tmp/input` in its
    /// scratch directory (needs [`ModuleSettings::scratch`]), for programs
    /// that read a named file or seek in their input; it counts against the
    /// scratch bound. The input is on stdin too.
    pub input_file: bool,
}

impl ModuleSettings {
    /// The default settings (see the type's docs).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the module's name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Appends a fixed argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Adds an exit code that means success.
    pub fn success_code(mut self, code: u32) -> Self {
        self.success_codes.insert(code);
        self
    }

    /// Gives each task a scratch directory of at most `bytes`.
    pub fn scratch(mut self, bytes: u64) -> Self {
        self.scratch = Some(bytes);
        self
    }

    /// Also gives the input as the file `/tmp/input` (see
    /// [`ModuleSettings::input_file`]).
    pub fn input_file(mut self) -> Self {
        self.input_file = true;
        self
    }

    /// Whether these are the default settings.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// The program name a task sees as `argv[0]`.
    pub fn program_name(&self) -> &str {
        self.name.as_deref().unwrap_or(DEFAULT_PROGRAM_NAME)
    }

    /// A task's whole `argv`: the program name, then the fixed arguments.
    pub fn argv(&self) -> Vec<String> {
        std::iter::once(self.program_name().to_string())
            .chain(self.args.iter().cloned())
            .collect()
    }

    /// Whether exit code `code` means success.
    pub fn is_success_code(&self, code: u32) -> bool {
        code == 0 || self.success_codes.contains(&code)
    }

    /// Checks every field; the error names the field and what is accepted.
    pub fn validate(&self) -> Result<()> {
        let invalid = |what: String| Err(Error::InvalidSettings(what));
        if let Some(name) = &self.name {
            let valid_char =
                |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-');
            if name.is_empty()
                || name.len() > MAX_NAME_LEN
                || !name.starts_with(|c: char| c.is_ascii_alphanumeric())
                || !name.chars().all(valid_char)
            {
                return invalid(format!(
                    "the name `{}` is not accepted: use 1 to {MAX_NAME_LEN} ASCII letters, \
                     digits, `.`, `_`, `+` or `-`, starting with a letter or a digit",
                    name.escape_debug()
                ));
            }
        }
        if self.args.len() > MAX_ARGS {
            return invalid(format!(
                "{} arguments is more than the maximum of {MAX_ARGS}",
                self.args.len()
            ));
        }
        if let Some(arg) = self.args.iter().find(|a| a.contains('\0')) {
            return invalid(format!(
                "the argument `{}` contains a NUL byte, which a C program cannot receive",
                arg.escape_debug()
            ));
        }
        if self.env.len() > MAX_ENV {
            return invalid(format!(
                "{} environment variables is more than the maximum of {MAX_ENV}",
                self.env.len()
            ));
        }
        for (key, value) in &self.env {
            if key.is_empty() || key.contains(['=', '\0']) {
                return invalid(format!(
                    "`{}` is not an environment variable name: it must be non-empty, without \
                     `=` or NUL",
                    key.escape_debug()
                ));
            }
            if key.starts_with("WPOOL_") {
                return invalid(format!(
                    "the environment variable `{key}` is reserved: wpool sets the `WPOOL_` \
                     variables itself (`WPOOL_TASK_ID`, `WPOOL_ATTEMPT`); choose another name"
                ));
            }
            if value.contains('\0') {
                return invalid(format!(
                    "the value of the environment variable `{key}` contains a NUL byte"
                ));
            }
        }
        let bytes: usize = self.args.iter().map(|a| a.len() + 1).sum::<usize>()
            + self
                .env
                .iter()
                .map(|(k, v)| k.len() + v.len() + 2)
                .sum::<usize>();
        if bytes > MAX_ARGS_ENV_BYTES {
            return invalid(format!(
                "the arguments and environment variables take {bytes} bytes, more than the \
                 maximum of {MAX_ARGS_ENV_BYTES}"
            ));
        }
        if self.success_codes.len() > MAX_SUCCESS_CODES {
            return invalid(format!(
                "{} success codes is more than the maximum of {MAX_SUCCESS_CODES}",
                self.success_codes.len()
            ));
        }
        if self.input_file && self.scratch.is_none() {
            return invalid(
                "the input can be given as a file only in a scratch directory: give a scratch \
                 size too"
                    .into(),
            );
        }
        if self.scratch == Some(0) {
            return invalid(
                "a scratch directory of 0 bytes is not accepted: give a size, or none for no \
                 scratch directory"
                    .into(),
            );
        }
        Ok(())
    }
}

/// A host directory an operator grants to tasks, read-only, at a guest
/// path. Only the operator grants directories ([`EngineConfig::read_only_dir`](crate::EngineConfig::read_only_dir),
/// `read_only_dirs` in `wpool serve`'s configuration); a submitter cannot.
///
/// A grant by name reaches every module registered under that name, and a
/// name is chosen by whoever registers the module: when submitters are not
/// trusted with the directory, grant it by hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadOnlyDir {
    /// The host directory. It must exist when the pool starts.
    pub host: std::path::PathBuf,
    /// Where the task sees it: an absolute path (`/data`), without `..`,
    /// and not `/tmp` (the scratch directory's).
    pub guest: String,
    /// Which modules see it. Default: all.
    #[serde(default)]
    pub modules: GrantTo,
}

impl ReadOnlyDir {
    /// Grants `host` at `guest` to every module.
    pub fn new(host: impl Into<std::path::PathBuf>, guest: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            guest: guest.into(),
            modules: GrantTo::All,
        }
    }

    /// Grants it only to the modules named `name`.
    pub fn for_name(mut self, name: impl Into<String>) -> Self {
        self.modules = GrantTo::Name(name.into());
        self
    }

    /// Grants it only to the module with this hash.
    pub fn for_hash(mut self, hash: crate::ModuleHash) -> Self {
        self.modules = GrantTo::Hash(hash);
        self
    }

    /// Whether a module with this hash and settings sees the directory.
    pub fn applies_to(&self, hash: &crate::ModuleHash, settings: &ModuleSettings) -> bool {
        match &self.modules {
            GrantTo::All => true,
            GrantTo::Name(name) => settings.name.as_deref() == Some(name.as_str()),
            GrantTo::Hash(h) => h == hash,
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let guest = &self.guest;
        if !guest.starts_with('/') || guest.split('/').any(|part| part == "..") {
            return Err(Error::Config(format!(
                "the guest path `{guest}` of the read-only directory {} must be absolute \
                 (`/data`) and must not contain `..`",
                self.host.display()
            )));
        }
        if guest.trim_end_matches('/') == crate::abi::scratch::GUEST_PATH {
            return Err(Error::Config(format!(
                "the guest path `{guest}` is the scratch directory's; grant {} elsewhere",
                self.host.display()
            )));
        }
        if !self.host.is_dir() {
            return Err(Error::Config(format!(
                "the read-only directory {} (for `{guest}`) is not a directory on this host; \
                 create it or fix the path",
                self.host.display()
            )));
        }
        Ok(())
    }
}

/// Which modules a [`ReadOnlyDir`] is granted to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantTo {
    /// Every module.
    #[default]
    All,
    /// Modules registered with this name ([`ModuleSettings::name`]).
    Name(String),
    /// The module with this hash.
    Hash(crate::ModuleHash),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_starts_with_the_name_or_task() {
        assert_eq!(ModuleSettings::new().argv(), ["task"]);
        assert_eq!(
            ModuleSettings::new().name("tool").arg("-x").argv(),
            ["tool", "-x"]
        );
    }

    #[test]
    fn bad_settings_are_refused_with_the_field_named() {
        let cases = [
            (ModuleSettings::new().name(""), "name"),
            (ModuleSettings::new().name("../x"), "name"),
            (ModuleSettings::new().name("a b"), "name"),
            (ModuleSettings::new().arg("a\0b"), "NUL"),
            (
                ModuleSettings::new().env("A=B", "c"),
                "environment variable name",
            ),
            (ModuleSettings::new().env("WPOOL_TASK_ID", "x"), "reserved"),
            (ModuleSettings::new().scratch(0), "scratch"),
        ];
        for (settings, expected) in cases {
            let message = settings.validate().unwrap_err().to_string();
            assert!(message.contains(expected), "{message}");
        }
        let mut many = ModuleSettings::new();
        many.args = vec!["x".into(); MAX_ARGS + 1];
        assert!(
            many.validate()
                .unwrap_err()
                .to_string()
                .contains("arguments")
        );
        assert!(
            ModuleSettings::new()
                .name("python3.12")
                .env("LANG", "C.UTF-8")
                .success_code(10)
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn json_form_is_stable_and_strict() {
        let settings = ModuleSettings::new().name("s").arg("a").success_code(10);
        let json = serde_json::to_string(&settings).unwrap();
        assert_eq!(
            json,
            r#"{"name":"s","args":["a"],"env":{},"success_codes":[10],"scratch":null,"input_file":false}"#
        );
        assert_eq!(
            serde_json::from_str::<ModuleSettings>(r#"{"name":"s"}"#).unwrap(),
            ModuleSettings::new().name("s")
        );
        assert!(serde_json::from_str::<ModuleSettings>(r#"{"nmae":"s"}"#).is_err());
    }
}
